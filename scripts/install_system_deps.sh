#!/usr/bin/env bash
# Debian packages the tests use beyond the venv: docker-compose (v1, only to `config`-validate
# docker-compose.yml; no engine is needed), a JDK for Spark, and headless chromium with its
# chromedriver for the browser test of the Airflow UI. Installed once, when missing.
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jdk-headless)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install_system_deps: missing ${need[*]}; install them (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "install_system_deps: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
