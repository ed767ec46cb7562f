#!/usr/bin/env bash
# Fetch here (where PyPI works) the wheels the GPU machine lacks, into .whl/ (ignored), for its
# CPython 3.12 on manylinux x86_64: zarr and what zarr needs beyond that image (which has numpy,
# packaging, typing-extensions and pyyaml). Carry .whl with the run: docs/performance.md, "The GPU check".
# The versions are those the test suite runs with here; --no-deps fetches none of their needs,
# so the loop below checks each wheel's Requires-Dist against what is carried or in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0)
IN_IMAGE="numpy packaging typing-extensions typing_extensions pyyaml"  # .library/device/KINDS.md
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
carried=$(for w in "${WHEELS[@]}"; do echo "${w%%==*}"; done)
missing=0
for f in .whl/*.whl; do
    for need in $(unzip -p "$f" '*/METADATA' | grep '^Requires-Dist:' | grep -v 'extra ==' \
                  | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | tr 'A-Z' 'a-z'); do
        if ! grep -qxF -- "$need" <(echo "$carried"; tr ' ' '\n' <<<"$IN_IMAGE"); then
            echo "gpu_wheels: $(basename "$f") needs $need, neither carried nor in the image" >&2
            missing=1
        fi
    done
done
ls -l .whl
du -ch .whl/*.whl | tail -1
exit $missing
