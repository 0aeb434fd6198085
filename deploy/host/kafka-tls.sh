#!/bin/bash
# The TLS material of the broker's SASL_SSL listener (the consumer fleet's way in), made on the host
# by deploy/host/setup.sh and never leaving it except ca.pem (public, handed to the fleet through
# Secrets Manager):
#   DIR/ca.pem, DIR/ca.key          a CA of this host alone (10 years; the key stays in DIR, 0600)
#   DIR/broker.crt                  the broker's certificate for IP:ADDRESS (subjectAltName: librdkafka
#                                   checks it), signed by the CA
#   DIR/broker.p12, .password       the broker's key and certificate as a PKCS#12 key store and its
#                                   password (not a PEM key store: Kafka wants its key encrypted, and
#                                   Java 17 cannot read openssl 3's PBES2-encrypted PKCS#8 key, "PBES2
#                                   SecretKeyFactory not available", measured with Kafka 4.4)
# Idempotent: the CA is made once; the broker's certificate again only when ADDRESS changed.
#   kafka-tls.sh /etc/imgpipe/kafka/tls 10.80.0.12
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: kafka-tls.sh DIR ADDRESS   (e.g. /etc/imgpipe/kafka/tls 10.80.0.12)" >&2; exit 2; }
dir=$1 address=$2
umask 077
mkdir -p "$dir"
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -sha256 -subj "/CN=imgpipe Kafka CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  chmod 0644 "$dir/ca.pem"
  rm -f "$dir/broker.crt"
fi
if [ -s "$dir/broker.crt" ] && [ -s "$dir/broker.p12" ] \
   && openssl x509 -in "$dir/broker.crt" -noout -checkip "$address" 2>/dev/null \
     | grep -q "does match"; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl rand -hex 24 > "$dir/broker.p12.password"
openssl req -newkey rsa:3072 -nodes -sha256 -subj "/CN=$address" -keyout "$work/broker.key" \
  -out "$work/broker.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
  "$address" > "$work/ext"
openssl x509 -req -in "$work/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -CAserial "$work/ca.srl" -days 825 -sha256 -extfile "$work/ext" -out "$work/broker.crt" 2>/dev/null
openssl pkcs12 -export -name broker -inkey "$work/broker.key" -in "$work/broker.crt" -certfile "$dir/ca.pem" \
  -passout "file:$dir/broker.p12.password" -out "$dir/broker.p12"
install -m 0644 "$work/broker.crt" "$dir/broker.crt"
