#!/usr/bin/env bash
# `make test-deploy`: build every CPU image, bring the compose stack up, check it with real
# clients (tests/deploy/test_stack.py), stop and restart an engine, then `down -v`.
#
# Uses docker when a docker engine answers, else podman (installed with apt when missing, with
# podman-compose from PyPI in a tools venv). Without a reachable image registry the base image is
# built from Debian packages (scripts/build_base_image.sh). pip settings of this machine (a CA
# bundle, a local wheel folder, file:// indexes) are passed into the builds.
# Environment:
#   PY                    Python with the test extra (default .venv/bin/python)
#   HFMESH_DEPLOY_IMAGES  images to build (default: every CPU image, the vLLM engine last)
#   HFMESH_SKIP_BUILD=1   use the images already built
#   BASE_IMAGE            skip the registry probe / Debian build and use this base
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HFMESH_REGISTRY=${HFMESH_REGISTRY:-localhost/hfmesh} HFMESH_TAG=${HFMESH_TAG:-latest}
images=(${HFMESH_DEPLOY_IMAGES:-gateway tokenizer control-plane engine-hf-cpu models engine-vllm-cpu})
compose_file=deploy/compose/compose.yaml
port=$(sed -n 's/^HFMESH_GATEWAY_PORT=//p' deploy/compose/.env)
note() { printf '\n== %s\n' "$*"; }

# --- a container engine and a compose ---------------------------------------------------------
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  export CONTAINER_ENGINE=docker; compose=(docker compose -f "$compose_file")
else
  export CONTAINER_ENGINE=podman
  if ! command -v podman >/dev/null; then
    note "installing podman (Debian packages)"
    apt-get update -qq && apt-get install -y -qq podman buildah debootstrap runc >/dev/null
  fi
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    # podman 4.3 without systemd: crun fails on hybrid cgroups, setrlimit fails on the defaults.
    export CONTAINERS_CONF=${TMPDIR:-/tmp}/hfmesh-containers.conf
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
  fi
  if ! command -v podman-compose >/dev/null; then
    tools=${HFMESH_DEPLOY_TOOLS:-/var/tmp/hfmesh-deploy-tools}
    [ -x "$tools/bin/podman-compose" ] || {
      note "installing podman-compose 1.6.0 (PyPI) into $tools"
      python3 -m venv "$tools" && "$tools/bin/pip" install -q podman-compose==1.6.0
    }
    export PATH="$tools/bin:$PATH"
  fi
  compose=(podman-compose -f "$compose_file")
fi
engine=$CONTAINER_ENGINE

# --- build ----------------------------------------------------------------------------------
if [ "${HFMESH_SKIP_BUILD:-}" != 1 ]; then
  if [ -z "${BASE_IMAGE:-}" ]; then
    if timeout 60 "$engine" pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
      export BASE_IMAGE=docker.io/library/python:3.11-slim
    else
      export BASE_IMAGE=localhost/hfmesh-base:bookworm
      if ! "$engine" image exists "$BASE_IMAGE" 2>/dev/null \
         && ! "$engine" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        note "no image registry: building $BASE_IMAGE from Debian packages"
        start=$(date +%s); scripts/build_base_image.sh "$BASE_IMAGE"
        echo "base image: $(($(date +%s) - start)) s"
      fi
    fi
  fi
  # This machine's pip settings, as build arguments and read-only mounts at the same paths.
  eval "$("$PY" - <<'PY'
import shlex, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    conf.setdefault(key.split(".", 1)[1], value.strip("'\""))
mounts, lines = [], []
if conf.get("cert"):
    lines.append(f"export PIP_CA_BUNDLE={shlex.quote(conf['cert'])}")
links = conf.get("find-links", "").split()
if links:
    mounts += links
    lines.append(f"export PIP_FIND_LINKS={shlex.quote(' '.join(links))}")
extra = [u for u in conf.get("extra-index-url", "").split() if u.startswith("file://")]
if extra:
    mounts += [u[len("file://"):].rstrip("/").rsplit("/simple", 1)[0] for u in extra]
    lines.append(f"export PIP_EXTRA_INDEX_URL={shlex.quote(' '.join(extra))}")
binds = " ".join(f"{m}:{m}:ro" for m in mounts)
lines.append(f"export BUILD_MOUNTS={shlex.quote(binds)}")
print("\n".join(lines))
PY
  )"
  note "building ${images[*]} (base $BASE_IMAGE)"
  scripts/build_images.sh "${images[@]}"
fi

# --- up ------------------------------------------------------------------------------------
services=$("$PY" - "${images[*]}" <<'PY'
import sys, yaml
built = sys.argv[1].split()
doc = yaml.safe_load(open("deploy/compose/compose.yaml"))
for name, service in doc["services"].items():
    image = service["image"].rsplit("/", 1)[1].split(":")[0]
    if image in built and service.get("profiles", ["cpu"]) == ["cpu"] and name != "models":
        print(name)
PY
)
cleanup() {
  note "down -v"
  "${compose[@]}" down -v >/dev/null 2>&1 || true
  left=$("$engine" ps -aq --filter label=com.docker.compose.project=hfmesh)
  volumes=$("$engine" volume ls -q | grep '^hfmesh[_-]' || true)
  if [ -n "$left$volumes" ]; then echo "left behind: $left $volumes"; exit 1; fi
  echo "nothing left running, no volume left"
}
trap cleanup EXIT
note "up: $(echo $services)"
start=$(date +%s)
"${compose[@]}" up -d $services >/tmp/hfmesh-compose-up.log 2>&1 || { cat /tmp/hfmesh-compose-up.log; exit 1; }
models=$("$PY" -c "import yaml; print(' '.join(m['name'] for m in yaml.safe_load(open('deploy/compose/mesh.yaml'))['models']))")
"$PY" - "$port" "$models" <<'PY'
import sys, time, httpx
port, models = sys.argv[1], sys.argv[2].split()
url, start = f"http://127.0.0.1:{port}", time.monotonic()
pending = set(models)
while pending and time.monotonic() - start < 1200:
    for model in sorted(pending):
        try:
            if httpx.get(f"{url}/v2/models/{model}/ready", timeout=5).status_code == 200:
                print(f"  ready  {model:28} {time.monotonic() - start:5.0f} s", flush=True)
                pending.discard(model)
        except httpx.HTTPError:
            pass
    time.sleep(2)
if pending:
    sys.exit(f"not ready after {time.monotonic() - start:.0f} s: {' '.join(sorted(pending))}")
PY
echo "stack up, every model ready: $(($(date +%s) - start)) s"
# Every container's own health check too (podman runs none by itself without systemd), so the
# vLLM engine is loaded, not just SmolLM2's HF fallback.
for service in $services; do
  id=$("$engine" ps -q --filter label=com.docker.compose.project=hfmesh \
       --filter "label=com.docker.compose.service=$service" | head -1)
  probe=$("$engine" inspect --format '{{json .Config.Healthcheck.Test}}' "$id" |
          "$PY" -c 'import json, sys; print(" ".join(json.load(sys.stdin)[1:]))')
  until "$engine" exec "$id" $probe >/dev/null 2>&1; do
    [ $(($(date +%s) - start)) -lt 1500 ] || { echo "$service: not healthy"; exit 1; }
    sleep 5
  done
  printf '  healthy %-34s %5d s\n' "$service" "$(($(date +%s) - start))"
done

# --- check ---------------------------------------------------------------------------------
note "checks with real clients"
HFMESH_DEPLOY_GATEWAY="http://127.0.0.1:$port" HFMESH_DEPLOY_ENGINE=$engine \
HFMESH_DEPLOY_COMPOSE="${compose[*]}" HFMESH_DEPLOY_REGISTRY=$HFMESH_REGISTRY \
HFMESH_DEPLOY_TAG=$HFMESH_TAG "$PY" -m pytest tests/deploy/test_stack.py -v || { for c in gateway control-plane hf-tiny-sentiment; do echo "== logs $c"; "$engine" logs "hfmesh_${c}_1" 2>&1 | tail -40; done; exit 1; }

note "image sizes"
for image in "${images[@]}"; do
  "$engine" image inspect --format '{{.Size}}' "$HFMESH_REGISTRY/$image:$HFMESH_TAG" |
    awk -v i="$image" '{ printf "  %-18s %6.0f MB\n", i, $1 / 1e6 }'
done
