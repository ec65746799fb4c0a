#!/bin/sh
# G (store apply, in process) of two checkouts side by side, alternated in one run:
#   benchmarks/compare_g.sh OTHER_CHECKOUT [ROUNDS [run.py options, e.g. --apply-batches 5]]
# Each round runs `run.py --only G` on OTHER_CHECKOUT's src, then on this one's; prints each
# run's G line (JSON) prefixed with which code made it.
other=$(cd "$1" && pwd)/src
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${2:-2}
[ $# -ge 2 ] && shift 2 || shift $#
for round in $(seq "$rounds"); do
    for code in other here; do
        if [ "$code" = other ]; then src=$other; else src=$here/src; fi
        line=$(PYTHONPATH=$src "$here/.venv/bin/python" "$here/benchmarks/run.py" --only G "$@" \
            2>&1 >/dev/null | grep '^   {')
        echo "round $round $code $line"
    done
done
