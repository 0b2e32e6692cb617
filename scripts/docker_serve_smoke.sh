#!/usr/bin/env bash
# Smoke test of the torch-free serving image (Dockerfile target "serve") on an index with extractor.onnx:
#   1. (unless SKIP_BUILD=1) docker build --target serve,
#   2. offline checks (--network none): torch is absent, the user is not root,
#   3. serves INDEX_DIR read-only, measures container start -> /readyz 200 and the server's resident memory,
#   4. posts a broken and a good bottle picture and checks the decisions (true, then false); with REFERENCE_IMAGE
#      set (e.g. patchcore:cpu) it serves the same index from that image with PATCHCORE_RUNTIME=torch and checks
#      that both give the same decisions and image scores within 1e-4.
#
#   INDEX_DIR=runs/idx/bottle scripts/docker_serve_smoke.sh
#
# Env (defaults): IMAGE (patchcore:serve), BASE_IMAGE (patchcore-base:bookworm), CA_BUNDLE_FILE ($PIP_CERT or none),
#   INDEX_DIR (required: an index built by patchcore-build-index with the onnx extra, or given patchcore-export),
#   DATA_ROOT (<repo>/../shared/data), REFERENCE_IMAGE (none), READY_TIMEOUT (120 s).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
IMAGE=${IMAGE:-patchcore:serve}
BASE_IMAGE=${BASE_IMAGE:-patchcore-base:bookworm}
INDEX_DIR=$(cd "${INDEX_DIR:?set INDEX_DIR to an index folder with extractor.onnx}" && pwd)
DATA_ROOT=${DATA_ROOT:-$REPO/../shared/data}
READY_TIMEOUT=${READY_TIMEOUT:-120}
REFERENCE_IMAGE=${REFERENCE_IMAGE:-}
CONTAINERS=()
log() { echo "[serve-smoke $(date +%H:%M:%S)] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
cleanup() { for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done; rm -f "$REPO/.docker-ca.crt"; }
trap cleanup EXIT
[[ -f "$INDEX_DIR/extractor.onnx" ]] || fail "$INDEX_DIR has no extractor.onnx: run patchcore-export $INDEX_DIR"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    ca_args=()
    ca=${CA_BUNDLE_FILE:-${PIP_CERT:-}}
    if [[ -n "$ca" ]]; then cp "$ca" "$REPO/.docker-ca.crt"; ca_args=(--build-arg CA_BUNDLE=.docker-ca.crt); fi
    t0=$(date +%s)
    docker build --network host --target serve --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca_args[@]}" -t "$IMAGE" . \
        || fail "docker build --target serve"
    log "build: $(( $(date +%s) - t0 )) s"
fi
log "image size: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
docker run --rm --network none "$IMAGE" python -c 'import importlib.util, sys; sys.exit(1 if importlib.util.find_spec("torch") else 0)' \
    || fail "torch is importable in $IMAGE"
[[ "$(docker run --rm --network none "$IMAGE" id -u)" != 0 ]] || fail "the image runs as root"

serve() {  # serve IMAGE RUNTIME -> prints "ready_s rss_mb broken_score broken_anomalous good_score good_anomalous"
    local image=$1 runtime=$2 port name t0 ready=0
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    name="patchcore-serve-smoke-$$-$runtime"
    CONTAINERS+=("$name")
    t0=$(date +%s.%N)
    docker run -d --name "$name" --network host -e "PATCHCORE_PORT=$port" -e "PATCHCORE_RUNTIME=$runtime" \
        -e PATCHCORE_THREADS=2 -v "$INDEX_DIR:/indexes/bottle:ro" "$image" \
        patchcore-serve --host 127.0.0.1 --port "$port" --index-dir /indexes >/dev/null || fail "docker run $image"
    for _ in $(seq 1 $(( READY_TIMEOUT * 20 ))); do
        if curl -sf -m 1 -o /dev/null "http://127.0.0.1:$port/readyz"; then ready=1; break; fi
        sleep 0.05
    done
    [[ $ready == 1 ]] || { docker logs "$name" >&2; fail "$image not ready after $READY_TIMEOUT s"; }
    local ready_s rss line out=()
    ready_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    for img in "$DATA_ROOT/mvtec_ad/bottle/test/broken_large/000.png" "$DATA_ROOT/mvtec_ad/bottle/test/good/000.png"; do
        line=$(curl -sS -m 120 -F "file=@$img" "http://127.0.0.1:$port/predict" | python3 -c \
            'import json, sys; r = json.load(sys.stdin); print(r["image_score"], str(r["is_anomalous"]).lower())') \
            || fail "POST /predict to $image"
        out+=("$line")
    done
    rss=$(docker exec "$name" awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' /proc/1/status)
    docker rm -f "$name" >/dev/null
    echo "$ready_s $rss ${out[0]} ${out[1]}"
}

read -r ready rss broken broken_flag good good_flag < <(serve "$IMAGE" onnx)
log "$IMAGE (onnx): start -> /readyz ${ready} s, server RSS ${rss} MB; broken_large/000 ${broken} ${broken_flag}, good/000 ${good} ${good_flag}"
[[ $broken_flag == true && $good_flag == false ]] || fail "wrong decisions from $IMAGE"
if [[ -n "$REFERENCE_IMAGE" ]]; then
    read -r r_ready r_rss r_broken r_broken_flag r_good r_good_flag < <(serve "$REFERENCE_IMAGE" torch)
    log "$REFERENCE_IMAGE (torch): start -> /readyz ${r_ready} s, server RSS ${r_rss} MB; ${r_broken} ${r_broken_flag}, ${r_good} ${r_good_flag}"
    [[ $r_broken_flag == "$broken_flag" && $r_good_flag == "$good_flag" ]] || fail "the two images decide differently"
    python3 -c "import sys; a, b = map(float, sys.argv[1:3]); c, d = map(float, sys.argv[3:5]); sys.exit(0 if abs(a - b) <= 1e-4 * abs(b) and abs(c - d) <= 1e-4 * abs(d) else 1)" \
        "$broken" "$r_broken" "$good" "$r_good" || fail "image scores differ by more than 1e-4 between the images"
fi
log "OK"
