#!/usr/bin/env bash
# The accelerator check (issue 22): on a machine where JAX finds a GPU (or another accelerator), run the sampler
# latency benchmark and a hopper bench at the `full` budget with the seeds over every device, and print their figures.
# Where JAX finds only the CPU it says so and runs nothing.
#
#   bash benchmarks/device_check.sh
#
# Sized by environment variables: METHODS (default flow), SEEDS (default the budget's), EPISODES (default the
# budget's), CALLS (latency calls per row, default 300), OUT (the bench's folder, default runs/device_check/hopper;
# rerunning resumes it).
set -euo pipefail
cd "$(dirname "$0")/.."

backend=$(python -c "import jax; print(jax.default_backend())")
if [ "$backend" = cpu ]; then
    echo "device_check: no accelerator found (JAX's default backend is cpu); nothing run"
    exit 0
fi
python -c "import jax; print('devices:', ', '.join(str(d) for d in jax.devices()))"

echo "== sampler latency (benchmarks/sampler_latency.py)"
python benchmarks/sampler_latency.py --calls "${CALLS:-300}"

out=${OUT:-runs/device_check/hopper}
echo "== physgen bench --task hopper --budget full --methods ${METHODS:-flow}, every device, into $out"
python - "$out" <<'EOF'
import os, sys
from physgen.bench import run_bench

number = lambda name: int(os.environ[name]) if os.environ.get(name) else None
run_bench("hopper", methods=os.environ.get("METHODS", "flow").split(","), seeds=number("SEEDS"),
          episodes=number("EPISODES"), budget="full", out=sys.argv[1], videos=False, devices="all")
EOF
# the report's header, time per phase and success table
sed -n '1,/^Per-seed success rates/p' "$out/report.md"
python - "$out" <<'EOF'
import json, sys
from pathlib import Path

environment = json.loads((Path(sys.argv[1]) / "protocol.json").read_text())["environment"]
print("devices:", ", ".join(environment["jax_devices"]), "| seeds spread over", environment["seed_devices"])
EOF
