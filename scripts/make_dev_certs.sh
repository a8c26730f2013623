#!/usr/bin/env bash
# Make a development CA and one mesh certificate (server and client use) for hfmesh's TLS/mTLS.
#
#   scripts/make_dev_certs.sh [OUT_DIR] [EXTRA_NAME ...]
#
# OUT_DIR (default: ./certs) receives ca.pem (the CA every member trusts), ca-key.pem (keep it
# private; only needed to sign more certificates), mesh.pem and mesh-key.pem (the certificate and
# key every service presents, as a server and as a client). The certificate's names (SANs) are
# localhost, 127.0.0.1, ::1, "hfmesh" (the name to give as --tls_server_name where replicas are
# dialled by address, as in Kubernetes), the compose service names of deploy/compose and every
# EXTRA_NAME (an IP address or a DNS name). An existing CA in OUT_DIR is reused, so running the
# script again renews mesh.pem under the same CA (services pick the new files up without a
# restart: docs/tls.md). For development only: a real deployment uses its own PKI.
set -euo pipefail

out="${1:-certs}"
shift || true
days="${HFMESH_CERT_DAYS:-365}"
# Found before the cd below: "$0" may be a relative path (scripts/make_dev_certs.sh).
compose="$(cd "$(dirname "$0")/.." && pwd)/deploy/compose/compose.yaml"
mkdir -p "$out"
cd "$out"

names=(localhost hfmesh control-plane tokenizer gateway)
if [[ -f "$compose" ]]; then
    # Every service of the generated compose file (two-space indented keys under services:).
    while read -r name; do names+=("$name"); done < <(
        awk '/^services:/{s=1;next} /^[^ ]/{s=0} s && /^  [a-z0-9-]+:$/{sub(/:$/,"");print $1}' \
            "$compose"
    )
fi
sans="IP:127.0.0.1,IP:::1"
declare -A seen
for name in "${names[@]}" "$@"; do
    [[ -n "${seen[$name]:-}" ]] && continue
    seen[$name]=1
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
        sans+=",IP:$name"
    else
        sans+=",DNS:$name"
    fi
done

if [[ ! -f ca.pem || ! -f ca-key.pem ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca-key.pem -out ca.pem -days "$days" -subj "/CN=hfmesh development CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout mesh-key.pem.new -out mesh.csr -subj "/CN=hfmesh" 2>/dev/null
extensions="$(mktemp)"
trap 'rm -f "$extensions" mesh.csr' EXIT
cat >"$extensions" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
EXT
openssl x509 -req -in mesh.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -out mesh.pem.new -days "$days" -extfile "$extensions" 2>/dev/null
# Key first, then certificate, each replaced whole (a reader never sees half a file). The mesh
# key stays readable by others so that containers running as another user read their mount;
# the CA key does not.
chmod 600 ca-key.pem
chmod 644 mesh-key.pem.new
mv mesh-key.pem.new mesh-key.pem
mv mesh.pem.new mesh.pem
rm -f ca.srl
echo "hfmesh: CA $(pwd)/ca.pem; certificate $(pwd)/mesh.pem (key mesh-key.pem) for ${sans}"
