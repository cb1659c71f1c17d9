"""Shared package: configuration, storage paths, the data contract, Spark session, assets.

Everything else (simulated world, Spark jobs, models, expectations, DAGs) depends on this
package; it depends on nothing in the project.
"""
