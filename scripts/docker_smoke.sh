#!/usr/bin/env bash
# End-to-end smoke test of the Docker image, from nothing but package registries:
#   1. Docker engine (installs docker.io and starts dockerd if none answers: scripts/start_dockerd.sh),
#   2. base image (debootstrap, scripts/docker_base_image.sh) when BASE_IMAGE is the local one and absent,
#   3. docker build,
#   4. offline checks in the image (--network none): it runs as a non-root user, torch/torchvision/faiss import,
#      pretrained MobileNetV2 loads from the baked cache, patchcore-fetch-weights --check,
#   5. builds a bottle index inside the container (--network none) from MVTec AD, into a host temp folder,
#   6. runs the server (--network host, free port), checks that its process is not root, waits for /readyz, posts
#      a broken and a good test image and checks is_anomalous (true, then false), waits for the HEALTHCHECK.
# Exits non-zero on any failure; always removes its container and temp folder.
#
#   scripts/docker_smoke.sh                        # everything
#   SMOKE_STAGE=image scripts/docker_smoke.sh      # stop after step 4 (no server needed)
#   SKIP_BUILD=1 scripts/docker_smoke.sh           # reuse $IMAGE
#
# Env (defaults): IMAGE (patchcore:cpu), TORCH_VARIANT (cpu), BASE_IMAGE (patchcore-base:bookworm: built locally;
#   set debian:bookworm-slim where a registry is reachable), TORCH_INDEX_URL (auto; for cpu falls back to "none",
#   the CUDA wheel from the package index, when download.pytorch.org does not answer), CA_BUNDLE_FILE (host PEM
#   bundle handed to the build; default: $PIP_CERT or pip's configured global.cert, else none;
#   set it empty to hand none), DATA_ROOT (<repo>/../shared/data),
#   CATEGORY (bottle), PREDICT_PATH (/predict), READY_TIMEOUT (300 s), HEALTH_TIMEOUT (90 s; 0 skips the check),
#   EXTRA_BUILD_ARGS (more `docker build` arguments, word-split).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

IMAGE=${IMAGE:-patchcore:cpu}
TORCH_VARIANT=${TORCH_VARIANT:-cpu}
BASE_IMAGE=${BASE_IMAGE:-patchcore-base:bookworm}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-auto}
DATA_ROOT=${DATA_ROOT:-$REPO/../shared/data}
CATEGORY=${CATEGORY:-bottle}
PREDICT_PATH=${PREDICT_PATH:-/predict}
READY_TIMEOUT=${READY_TIMEOUT:-300}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-90}
SMOKE_STAGE=${SMOKE_STAGE:-all}
SKIP_BUILD=${SKIP_BUILD:-0}

CONTAINER="patchcore-smoke-$$"
CA_IN_CONTEXT=".docker-ca.crt"
TMP_DIR=""
declare -a TIMINGS=()

log() { echo "[smoke $(date +%H:%M:%S)] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { TIMINGS+=("$(printf '%-36s %8ss' "$1" "$2")"); log "$1: $2 s"; }

cleanup() {
    local rc=$?
    if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
        if [[ $rc -ne 0 ]]; then
            log "server container logs (last 60 lines):"
            docker logs --tail 60 "$CONTAINER" >&2 || true
        fi
        docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    rm -f "$REPO/$CA_IN_CONTEXT"
    [[ -n "$TMP_DIR" ]] && rm -rf "$TMP_DIR"
    if [[ ${#TIMINGS[@]} -gt 0 ]]; then
        echo "---- timings ----"
        printf '%s\n' "${TIMINGS[@]}"
    fi
    if [[ $rc -eq 0 ]]; then echo "SMOKE OK"; else echo "SMOKE FAILED (rc=$rc)"; fi
    exit $rc
}
trap cleanup EXIT

# ---- 1. engine --------------------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    "$REPO/scripts/start_dockerd.sh"
fi
command -v curl >/dev/null || fail "curl is needed on the host"

# ---- 2. base image ----------------------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ "$BASE_IMAGE" == patchcore-base:* ]]; then
        t0=$(now)
        "$REPO/scripts/docker_base_image.sh" "$BASE_IMAGE"
        timing "base image (debootstrap)" "$(elapsed "$t0")"
    else
        log "$BASE_IMAGE is not local; docker build will try to pull it"
    fi
fi

# ---- 3. build ---------------------------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
    build_args=(--network host -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_VARIANT=$TORCH_VARIANT")
    if [[ "$TORCH_INDEX_URL" == auto && "$TORCH_VARIANT" == cpu ]] \
        && ! curl -sSf -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
        log "download.pytorch.org does not answer: the CPU image takes torch from the package index (CUDA build)"
        TORCH_INDEX_URL=none
    fi
    build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST NUM_THREADS; do
        [[ -n "${!v:-}" ]] && build_args+=(--build-arg "$v=${!v}")
    done
    if [[ -z "${CA_BUNDLE_FILE+set}" ]]; then
        CA_BUNDLE_FILE=${PIP_CERT:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -n1)}
    fi
    if [[ -n "$CA_BUNDLE_FILE" ]]; then
        [[ -s "$CA_BUNDLE_FILE" ]] || fail "CA_BUNDLE_FILE=$CA_BUNDLE_FILE does not exist"
        cp "$CA_BUNDLE_FILE" "$REPO/$CA_IN_CONTEXT"
        build_args+=(--build-arg "CA_BUNDLE=$CA_IN_CONTEXT")
        log "handing CA bundle $CA_BUNDLE_FILE to the build"
    fi
    # shellcheck disable=SC2206
    build_args+=(${EXTRA_BUILD_ARGS:-})
    log "docker build ${build_args[*]} ."
    t0=$(now)
    docker build "${build_args[@]}" . >&2 || fail "docker build"
    timing "docker build" "$(elapsed "$t0")"
    rm -f "$REPO/$CA_IN_CONTEXT"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE"

# ---- 4. offline checks inside the image -------------------------------------------------------------------------
t0=$(now)
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
uid=$(docker run --rm --network none "$IMAGE" id -u) || fail "docker run id -u"
[[ -n "$user" && "$user" != root && "$user" != 0 && "$uid" != 0 ]] || fail "the image runs as root (USER '$user', uid $uid)"
log "the image runs as user '$user' (uid $uid), not root"
docker run --rm --network none "$IMAGE" sh -c '
    set -e
    id
    patchcore-fetch-weights --check
    python -c "
import faiss, torch, torchvision
m = torchvision.models.mobilenet_v2(weights=\"IMAGENET1K_V1\").eval()
with torch.no_grad():
    y = m(torch.zeros(1, 3, 224, 224))
print(\"torch\", torch.__version__, \"cuda build\", torch.version.cuda, \"| torchvision\", torchvision.__version__,
      \"| faiss\", faiss.__version__, \"| mobilenet_v2 pretrained ok, out\", tuple(y.shape), \"| threads\", torch.get_num_threads())
"' >&2 || fail "offline import / pretrained-weights check"
timing "offline checks" "$(elapsed "$t0")"

if [[ "$SMOKE_STAGE" == image ]]; then
    docker image ls "${IMAGE%%:*}" >&2
    exit 0
fi

# ---- 5. build an index inside the container ---------------------------------------------------------------------
DATA_DIR="$DATA_ROOT/mvtec_ad/$CATEGORY"
[[ -d "$DATA_DIR/train/good" ]] || fail "no data at $DATA_DIR (set DATA_ROOT)"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/patchcore-smoke.XXXXXX")
chmod 0777 "$TMP_DIR"   # the image runs as uid 10001
t0=$(now)
docker run --rm --network none -v "$DATA_DIR:/data:ro" -v "$TMP_DIR:/indexes" "$IMAGE" \
    patchcore-build-index --data /data --out "/indexes/$CATEGORY" --no-progress >&2 || fail "patchcore-build-index"
timing "index build ($CATEGORY)" "$(elapsed "$t0")"
log "index files: $(cd "$TMP_DIR" && find . -type f | sort | tr '\n' ' ')"

# ---- 6. serve, predict ------------------------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE_URL="http://127.0.0.1:$PORT"
t0=$(now)
docker run -d --name "$CONTAINER" --network host -e "PATCHCORE_PORT=$PORT" -v "$TMP_DIR:/indexes:ro" "$IMAGE" \
    patchcore-serve --host 127.0.0.1 --port "$PORT" --index-dir /indexes >/dev/null || fail "docker run server"
log "server container $CONTAINER on $BASE_URL"
server_uid=$(docker exec "$CONTAINER" awk '/^Uid:/ { print $2 }' /proc/1/status) || fail "docker exec (server uid)"
[[ -n "$server_uid" && "$server_uid" != 0 ]] || fail "the server process runs as root (uid '$server_uid')"
log "the server process runs as uid $server_uid"
ready=0
for _ in $(seq 1 "$READY_TIMEOUT"); do
    if [[ "$(docker container inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != true ]]; then
        fail "server container exited"
    fi
    if curl -sf -m 2 -o /dev/null "$BASE_URL/readyz"; then ready=1; break; fi
    sleep 1
done
[[ $ready == 1 ]] || fail "server not ready after ${READY_TIMEOUT}s"
timing "server start -> /readyz" "$(elapsed "$t0")"
log "/readyz: $(curl -s -m 5 "$BASE_URL/readyz")"

predict() {  # $1 image path relative to the category folder, $2 expected is_anomalous (true|false)
    local img="$DATA_DIR/$1" out t0
    [[ -f "$img" ]] || fail "no test image $img"
    t0=$(now)
    out=$(curl -sS -m 120 -w '\n%{http_code}' -F "file=@$img" "$BASE_URL$PREDICT_PATH") || fail "POST $PREDICT_PATH $1"
    timing "predict $1" "$(elapsed "$t0")"
    local code=${out##*$'\n'} body=${out%$'\n'*}
    echo "$1 -> HTTP $code $body" >&2
    [[ "$code" == 200 ]] || fail "POST $1 answered HTTP $code"
    python3 -c '
import json, sys
body, want = json.loads(sys.argv[1]), sys.argv[2] == "true"
missing = [k for k in ("image_score", "normalised_score", "is_anomalous", "threshold") if k not in body]
if missing:
    sys.exit(f"answer lacks {missing}")
got, score, threshold = body["is_anomalous"], body["image_score"], body["threshold"]
if got is not want:
    sys.exit(f"is_anomalous is {got!r}, expected {want} (image_score {score}, threshold {threshold})")
' "$body" "$2" || fail "wrong answer for $1"
}
predict test/broken_large/000.png true
predict test/good/000.png false

# ---- HEALTHCHECK ------------------------------------------------------------------------------------------------
if [[ "$HEALTH_TIMEOUT" != 0 ]]; then
    t0=$(now)
    status=""
    for _ in $(seq 1 "$HEALTH_TIMEOUT"); do
        status=$(docker container inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$CONTAINER")
        [[ "$status" == healthy || "$status" == unhealthy || "$status" == none ]] && break
        sleep 1
    done
    [[ "$status" == healthy ]] || fail "docker health status: $status"
    timing "HEALTHCHECK -> healthy" "$(elapsed "$t0")"
fi

echo "---- image ----"
docker image ls "${IMAGE%%:*}"
