#!/usr/bin/env bash
# A local stand-in for an identity provider, to try the gateway's JWKS verification:
#   scripts/oidc-token.sh init [DIR]      an RSA key (DIR/key.pem) and its JWKS (DIR/jwks.json)
#   scripts/oidc-token.sh mint [DIR] --tenant acme --roles reader[,writer] [--subject svc]
#                                         [--audience gateway] [--issuer URL] [--ttl 300]
# DIR defaults to data/oidc. Serve DIR over HTTP (python3 -m http.server) and point
# JWT_JWKS_URL at jwks.json. Needs openssl, base64 and python3.
set -euo pipefail

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

command=${1:?init or mint}
shift
dir=data/oidc
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then dir=$1; shift; fi

case "$command" in
init)
  mkdir -p "$dir"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/key.pem" 2>/dev/null
  n=$(openssl rsa -in "$dir/key.pem" -noout -modulus | cut -d= -f2 |
    python3 -c 'import base64, sys; print(base64.urlsafe_b64encode(bytes.fromhex(sys.stdin.read().strip())).decode().rstrip("="))')
  kid=$(openssl rsa -in "$dir/key.pem" -pubout 2>/dev/null | openssl dgst -sha256 -r | cut -c1-16)
  printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"%s","n":"%s","e":"AQAB"}]}\n' \
    "$kid" "$n" > "$dir/jwks.json"
  echo "$dir/jwks.json"
  ;;
mint)
  tenant="" roles="reader" subject="demo-service" audience="gateway" issuer="" ttl=300
  while [ $# -gt 0 ]; do
    case "$1" in
      --tenant) tenant=$2 ;; --roles) roles=$2 ;; --subject) subject=$2 ;;
      --audience) audience=$2 ;; --issuer) issuer=$2 ;; --ttl) ttl=$2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
  done
  kid=$(openssl rsa -in "$dir/key.pem" -pubout 2>/dev/null | openssl dgst -sha256 -r | cut -c1-16)
  now=$(date +%s)
  roles_json=$(printf '%s' "$roles" | awk -F, '{for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? "," : ""), $i}')
  claims="{\"sub\":\"$subject\",\"aud\":\"$audience\",\"iat\":$now,\"exp\":$((now + ttl)),\"roles\":[$roles_json]"
  [ -n "$tenant" ] && claims="$claims,\"tenant\":\"$tenant\""
  [ -n "$issuer" ] && claims="$claims,\"iss\":\"$issuer\""
  claims="$claims}"
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"%s"}' "$kid" | b64url)
  payload=$(printf '%s' "$claims" | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$dir/key.pem" | b64url)
  echo "$header.$payload.$signature"
  ;;
*)
  echo "usage: $0 init|mint [DIR] [options]" >&2
  exit 2
  ;;
esac
