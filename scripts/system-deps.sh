#!/usr/bin/env bash
# System packages the test suite uses, installed from Debian's archive when missing (needs root and apt-get):
# chromium opens the HTML report in a real headless browser; docker-compose (without the Docker engine:
# --no-install-recommends) validates docker-compose.yml with `docker-compose config`; orthanc and
# orthanc-dicomweb are the PACS of the DICOMweb tests (started by scripts/services.sh); dicom3tools' dciodvfy
# validates the DICOM-SEG objects against the standard; iptables cuts one service off a test host's network
# namespace (tests/partitions: its rules live in that namespace only).
set -euo pipefail
browser=0; compose=0; orthanc=0; dicomweb=0; dicom3tools=0; iptables=0
command -v chromium >/dev/null 2>&1 || browser=1
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || compose=1
command -v Orthanc >/dev/null 2>&1 || orthanc=1
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || dicomweb=1
command -v dciodvfy >/dev/null 2>&1 || dicom3tools=1
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || iptables=1
[ "$browser$compose$orthanc$dicomweb$dicom3tools$iptables" = "000000" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages (chromium: $browser, docker-compose: $compose, orthanc: $orthanc," \
    "orthanc-dicomweb: $dicomweb, dicom3tools: $dicom3tools, iptables: $iptables); install them yourself" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ "$browser" = 1 ]; then apt-get install -y -qq chromium >/dev/null; fi
if [ "$compose" = 1 ]; then apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; fi
if [ "$orthanc$dicomweb" != "00" ]; then apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; fi
if [ "$dicom3tools" = 1 ]; then apt-get install -y -qq dicom3tools >/dev/null; fi
if [ "$iptables" = 1 ]; then apt-get install -y -qq iptables >/dev/null; fi
