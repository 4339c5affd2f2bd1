#!/usr/bin/env bash
# Start the real services the tests talk to when they are down: PostgreSQL (127.0.0.1:5432, trust auth, database
# `test`) and Redis (127.0.0.1:6379), the way this project's development machines run them, and Orthanc with its
# DICOMweb plugin (127.0.0.1:8042, DICOMweb root /dicom-web/) as the PACS of the archive tests when it is installed
# (scripts/system-deps.sh installs it). Orthanc's packaged service needs an init system; here it runs as a
# background process with its configuration and storage in $PIXELPERFECT_ORTHANC_DIR (default
# /tmp/pixelperfect-orthanc).
set -euo pipefail
orthanc_up() { curl -fsS -o /dev/null "http://127.0.0.1:${ORTHANC_HTTP_PORT:-8042}/dicom-web/studies?limit=1" 2>/dev/null; }
# The Orthanc this script starts: its HTTP port 8042 (DICOMweb root /dicom-web/) and its DICOM server on 4242 (AE
# title ORTHANC, called AE title checked), where only our AE title PIXELPERFECT from 127.0.0.1 may query (C-FIND),
# retrieve (C-GET) and store (C-STORE): the DIMSE archive tests (docs/archives.md). Orthanc 1.10 has no option to
# bind its DICOM port to one address; the per-modality checks stand in for it. ORTHANC_HTTP_PORT, ORTHANC_DICOM_PORT
# and PIXELPERFECT_ORTHANC_DIR start a private one (tests and benchmarks use the defaults). TCP_NODELAY=1 in its
# environment makes DCMTK (Orthanc's DICOM stack) turn Nagle's algorithm off: with it on, every C-GET waited ~40 ms
# on delayed ACKs (48 -> 7 ms an image).
orthanc_config() {
  cat <<JSON
// written by scripts/services.sh, which starts Orthanc with TCP_NODELAY=1 (see below)
{
  "Name": "pixelperfect-test",
  "StorageDirectory": "$1/storage",
  "IndexDirectory": "$1/storage",
  "HttpPort": ${ORTHANC_HTTP_PORT:-8042},
  "DicomServerEnabled": true,
  "DicomAet": "ORTHANC",
  "DicomPort": ${ORTHANC_DICOM_PORT:-4242},
  "DicomCheckCalledAet": true,
  "StrictAetComparison": true,
  "DicomCheckModalityHost": true,
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": false,
  "DicomAlwaysAllowFind": false,
  "DicomAlwaysAllowGet": false,
  "DicomAlwaysAllowMove": false,
  "DicomModalities": {
    "pixelperfect": {"AET": "PIXELPERFECT", "Host": "127.0.0.1", "Port": 11112, "AllowEcho": true, "AllowFind": true,
                     "AllowGet": true, "AllowMove": false, "AllowStore": true, "AllowTranscoding": true}
  },
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "HttpCompressionEnabled": false,
  "OverwriteInstances": true,
  "Plugins": ["/usr/share/orthanc/plugins"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Host": "127.0.0.1:${ORTHANC_HTTP_PORT:-8042}"}
}
JSON
}
# The pid of an Orthanc that this script started from $1/orthanc.json (its command line names that file), if any.
our_orthanc() {
  local pid
  for pid in $(pgrep -x Orthanc 2>/dev/null || true); do
    [ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "Orthanc $1/orthanc.json " ] && { echo "$pid"; return 0; }
  done
  return 1
}
if command -v Orthanc >/dev/null 2>&1; then
  dir="${PIXELPERFECT_ORTHANC_DIR:-/tmp/pixelperfect-orthanc}"
  mkdir -p "$dir/storage"
  orthanc_config "$dir" >"$dir/orthanc.json.want"
  if orthanc_up && pid="$(our_orthanc "$dir")" && ! cmp -s "$dir/orthanc.json.want" "$dir/orthanc.json"; then
    # started here with an older configuration (e.g. without its DICOM server): restart it with this one; its
    # storage stays. An Orthanc this script did not start is never touched.
    echo "restarting Orthanc (pid $pid), started by services.sh with an older configuration" >&2
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  if ! orthanc_up; then
    mv "$dir/orthanc.json.want" "$dir/orthanc.json"
    TCP_NODELAY=1 nohup Orthanc "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
    for _ in $(seq 1 30); do orthanc_up && break; sleep 1; done
    orthanc_up || { echo "Orthanc did not start on 127.0.0.1:${ORTHANC_HTTP_PORT:-8042}; see $dir/orthanc.log" >&2; exit 1; }
  fi
  rm -f "$dir/orthanc.json.want"
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && command -v pg_ctlcluster >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 must be running for the tests" >&2
exit 1
