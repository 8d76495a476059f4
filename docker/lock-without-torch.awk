# requirements/lock.txt for hosts that cannot take its torch entry (torch==X+cpu, PyTorch's CPU
# build for Linux/Windows): the CUDA image (Dockerfile.cuda) and macOS (.github/workflows/macos.yml).
#   awk -f docker/lock-without-torch.awk requirements/lock.txt              the lock minus torch:
#       every other package keeps its exact version and sha256s (pip --require-hashes --no-deps)
#   awk -v mode=pins -f docker/lock-without-torch.awk requirements/lock.txt  the same set as plain
#       NAME==VERSION constraints (pip -c), so installing torch's own build cannot move them
#   awk -v mode=torch -f docker/lock-without-torch.awk requirements/lock.txt torch's version
#       without its local tag (2.13.0 for 2.13.0+cpu), for `torch==VERSION+cu128` or PyPI's torch
# An entry is a `name==version \` line at column 0 followed by indented --hash and "# via" lines.
/^torch==/ {
    if (mode == "torch") { v = $1; sub(/^torch==/, "", v); sub(/[+].*$/, "", v); print v }
    skip = 1
    next
}
skip && /^[ \t]/ { next }
{ skip = 0 }
mode == "pins" { if ($0 ~ /^[A-Za-z0-9][A-Za-z0-9._-]*==/) { print $1 } next }
mode == "torch" { next }
{ print }
