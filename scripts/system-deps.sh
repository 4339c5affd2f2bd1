#!/usr/bin/env bash
# System packages the test suite uses, installed from Debian's archive when missing (needs root and apt-get):
# chromium opens the HTML report in a real headless browser; docker-compose (without the Docker engine:
# --no-install-recommends) validates docker-compose.yml with `docker-compose config`.
set -euo pipefail
browser=0; compose=0
command -v chromium >/dev/null 2>&1 || browser=1
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || compose=1
[ "$browser$compose" = "00" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages (chromium: $browser, docker-compose: $compose); install them yourself" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ "$browser" = 1 ]; then apt-get install -y -qq chromium >/dev/null; fi
if [ "$compose" = 1 ]; then apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; fi
