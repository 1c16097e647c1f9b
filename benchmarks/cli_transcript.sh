#!/usr/bin/env bash
# Regenerates benchmarks/cli_transcript.txt: the README demo, then the batch behaviours a user relies on
# (bad inputs, outputs beside the inputs, SIGTERM and resume). Run from the repository root with the
# package installed:  bash benchmarks/cli_transcript.sh > benchmarks/cli_transcript.txt 2>&1
set -u
export COLUMNS=110
work=runs/transcript  # git-ignored; relative, so the transcript shows short paths
rm -rf "$work" && mkdir -p "$work"
run() {  # echo the command, run it, print its exit code
  echo "\$ $*"
  "$@"
  echo "exit code: $?"
}

echo "# ---- README quick start on the bundled samples ($(nproc --all) CPU cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, no GPU) ----"
start=$(date +%s.%N)
run mkgan-engine sr samples/ -o "$work/out" --gt-dir samples/hr --device cpu
echo "wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
echo "\$ ls out/"
ls "$work/out"
echo "\$ # per region: estimator, kernel, confidence (report.json)"
python3 - "$work/out/report.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
for e in report["images"]:
    if e["status"] == "ok":
        for r in e["regions"]:
            k = r["kernel"]
            print(f"{e['input'].split('/')[-1]:<18} {r['name']:<25} {r['estimator']:<6} sigma {k['sigma_major_px']:.2f}/{k['sigma_minor_px']:.2f} px "
                  f"at {k['theta_deg']:5.1f} deg, {r['confidence']['windows']} windows, spread {r['confidence']['spread_px']}")
        print(f"{'':<18} metrics {e['metrics']}, timings {e['timings_s']}")
EOF

echo
echo "# ---- a folder of good and bad inputs ----"
mkdir -p "$work/mixed"
python3 - "$work/mixed" <<'EOF'
import sys, cv2, numpy as np
d = sys.argv[1]
rgb = cv2.imread("samples/set5_bird.png")[:96, :96]
cv2.imwrite(f"{d}/good.png", rgb)
cv2.imwrite(f"{d}/grey.png", cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
cv2.imwrite(f"{d}/rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
cv2.imwrite(f"{d}/deep16.png", rgb.astype(np.uint16) * 257)
cv2.imwrite(f"{d}/tiny.png", rgb[:40, :40])
open(f"{d}/corrupt.png", "wb").write(b"\x89PNG\r\n\x1a\n garbage")
jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
open(f"{d}/truncated.jpg", "wb").write(jpeg[: len(jpeg) // 2])
open(f"{d}/empty.jpg", "wb").write(b"")
open(f"{d}/notes.txt", "w").write("not an image")
EOF
echo "\$ ls mixed/"
ls "$work/mixed"
run mkgan-engine sr "$work/mixed" -o "$work/mixed" --device cpu --zssr-iters 60   # outputs beside the inputs
run mkgan-engine sr "$work/mixed" -o "$work/mixed" --device cpu --zssr-iters 60 --skip-existing -q   # rerun: outputs are not inputs
run mkgan-engine sr "$work/mixed/good.png" -o "$work/mixed" --suffix "" --device cpu   # would overwrite its input

echo
echo "# ---- SIGTERM mid-batch, then resume with --skip-existing ----"
mkdir -p "$work/resume_in"
for i in 0 1 2; do python3 -c "import cv2; cv2.imwrite('$work/resume_in/p$i.png', cv2.imread('samples/set5_baby.png')[$((i * 8)):$((i * 8 + 96)), :96])"; done
echo "\$ mkgan-engine sr resume_in/ -o resume_out/ --device cpu --zssr-iters 200 --pack 1 &  # then kill -TERM once p0_x2.png exists"
mkgan-engine sr "$work/resume_in" -o "$work/resume_out" --device cpu --zssr-iters 200 --pack 1 &
pid=$!
while [ ! -e "$work/resume_out/p0_x2.png" ]; do sleep 0.2; done
kill -TERM $pid
wait $pid
echo "exit code: $?"
echo "\$ ls -a resume_out/"
ls -a "$work/resume_out"
run mkgan-engine sr "$work/resume_in" -o "$work/resume_out" --device cpu --zssr-iters 200 --skip-existing
