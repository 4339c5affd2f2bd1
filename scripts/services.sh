#!/usr/bin/env bash
# Start the real services the tests talk to when they are down: PostgreSQL (127.0.0.1:5432, trust auth, database
# `test`) and Redis (127.0.0.1:6379), the way this project's development machines run them, and Orthanc with its
# DICOMweb plugin (127.0.0.1:8042, DICOMweb root /dicom-web/) as the PACS of the archive tests when it is installed
# (scripts/system-deps.sh installs it). Orthanc's packaged service needs an init system; here it runs as a
# background process with its configuration and storage in $PIXELPERFECT_ORTHANC_DIR (default
# /tmp/pixelperfect-orthanc).
set -euo pipefail
orthanc_up() { curl -fsS -o /dev/null http://127.0.0.1:8042/dicom-web/studies?limit=1 2>/dev/null; }
if ! orthanc_up && command -v Orthanc >/dev/null 2>&1; then
  dir="${PIXELPERFECT_ORTHANC_DIR:-/tmp/pixelperfect-orthanc}"
  mkdir -p "$dir/storage"
  cat >"$dir/orthanc.json" <<JSON
{
  "Name": "pixelperfect-test",
  "StorageDirectory": "$dir/storage",
  "IndexDirectory": "$dir/storage",
  "HttpPort": 8042,
  "DicomServerEnabled": false,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "HttpCompressionEnabled": false,
  "OverwriteInstances": true,
  "Plugins": ["/usr/share/orthanc/plugins"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Host": "127.0.0.1:8042"}
}
JSON
  nohup Orthanc "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
  for _ in $(seq 1 30); do orthanc_up && break; sleep 1; done
  orthanc_up || { echo "Orthanc did not start on 127.0.0.1:8042; see $dir/orthanc.log" >&2; exit 1; }
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
