"""Offline inference helpers, the ad_id -> visual embedding lookup table, the published-version
registry and the online predictor (FieldEmbedding + DCN head over the table, no CNN)."""
