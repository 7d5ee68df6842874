#!/usr/bin/env bash
# The measurements in ../README.md ("chatforge learn"): three facts learned alone, then fifteen
# learned one after another into one adapter. Results: $OUT/*/learn_report.json, and the
# tables printed by summarise.py at the end.
#   CHATFORGE=.venv/bin/chatforge OUT=runs/learn examples/knowledge_injection/learn/measure.sh
set -u
HERE=examples/knowledge_injection/learn
CF=${CHATFORGE:-chatforge}
OUT=${OUT:-runs/learn}
PY=${PYTHON:-python3}
for kind in organisation product preference; do
    /usr/bin/time -f "$kind: %e s wall" $CF learn --file $HERE/$kind.jsonl --output $OUT/$kind
done
# The organisation and the product again, with their names in the other script given as aliases.
for kind in organisation_named product_named; do
    /usr/bin/time -f "$kind: %e s wall" $CF learn --file $HERE/$kind.jsonl --output $OUT/$kind
done
# Accumulation: the three facts above, then the seven of more_facts.jsonl and the five of
# later_facts.jsonl, each --into the last.
# The first step is the organisation run above (the same command; a run is deterministic).
mkdir -p $OUT/acc-facts
cat $HERE/organisation.jsonl $HERE/product.jsonl $HERE/preference.jsonl $HERE/more_facts.jsonl $HERE/later_facts.jsonl \
    | split -l 1 -d -a 2 --additional-suffix=.jsonl - $OUT/acc-facts/fact-
[ -d $OUT/acc-fact-00 ] || cp -r $OUT/organisation $OUT/acc-fact-00
prev=$OUT/acc-fact-00
[ -f $prev/adapter_config.json ] || prev=$prev/rejected
for f in $OUT/acc-facts/fact-*.jsonl; do
    [ "$(basename $f)" = fact-00.jsonl ] && continue
    n=$(basename $f .jsonl)
    into=${prev:+--into $prev}
    /usr/bin/time -f "$n: %e s wall" $CF learn --file $f $into --output $OUT/acc-$n
    # A rejected step's adapter (acc-N/rejected) is carried on, so the table shows where it breaks.
    if [ -f $OUT/acc-$n/adapter_config.json ]; then prev=$OUT/acc-$n; else prev=$OUT/acc-$n/rejected; fi
done
$PY $HERE/summarise.py $OUT
