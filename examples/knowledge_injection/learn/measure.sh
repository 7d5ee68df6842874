#!/usr/bin/env bash
# The measurements in ../README.md ("chatforge learn"): three facts learned alone, then ten
# learned one after another into one adapter. Results: runs/learn/*/learn_report.json.
set -u
HERE=examples/knowledge_injection/learn
CF=${CHATFORGE:-chatforge}
for kind in organisation product preference; do
    /usr/bin/time -f "$kind: %e s wall" $CF learn --file $HERE/$kind.jsonl --output runs/learn/$kind
done
# Accumulation: the three facts above, then the seven of more_facts.jsonl, each --into the last.
mkdir -p runs/learn/acc-facts
cat $HERE/organisation.jsonl $HERE/product.jsonl $HERE/preference.jsonl $HERE/more_facts.jsonl \
    | split -l 1 -d -a 2 --additional-suffix=.jsonl - runs/learn/acc-facts/fact-
prev=""
for f in runs/learn/acc-facts/fact-*.jsonl; do
    n=$(basename $f .jsonl)
    into=${prev:+--into $prev}
    /usr/bin/time -f "$n: %e s wall" $CF learn --file $f $into --output runs/learn/acc-$n
    # A rejected step's adapter (runs/learn/acc-N/rejected) is carried on, so the table shows where it breaks.
    if [ -f runs/learn/acc-$n/adapter_config.json ]; then prev=runs/learn/acc-$n; else prev=runs/learn/acc-$n/rejected; fi
done
