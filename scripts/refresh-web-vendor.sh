#!/usr/bin/env bash
# Refreshes the web UI's third-party browser files in src/chatforge/serve/static/vendor/
# from the npm registry, at the pinned versions below (the page is served offline: no CDN).
# Copies only the files the page loads, each package's licence, and KaTeX's fonts in woff2
# only (its CSS is rewritten to name just those). Needs npm and network access; the result
# is committed, so neither is needed to build, install or test chatforge.
#
#   scripts/refresh-web-vendor.sh          # then review `git diff --stat` and commit
set -euo pipefail

MARKED=18.2.1                 # Markdown (GFM: tables, task lists, nested lists)
MARKED_KATEX=5.1.13           # $...$ and $$...$$ for marked (peer: katex <0.19, marked <19)
KATEX=0.16.47                 # math
HLJS=11.12.0                  # highlight.js, the "common languages" browser build
DOMPURIFY=3.5.0               # HTML sanitiser

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/src/chatforge/serve/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME@VERSION DIR: unpack the package's tarball into $work/DIR
  local dir=$work/$2
  mkdir -p "$dir"
  (cd "$work" && npm pack --silent "$1" >"$2.name")
  tar -xzf "$work/$(cat "$work/$2.name")" -C "$dir" --strip-components=1
}

fetch "marked@$MARKED" marked
fetch "marked-katex-extension@$MARKED_KATEX" marked-katex
fetch "katex@$KATEX" katex
fetch "@highlightjs/cdn-assets@$HLJS" hljs
fetch "dompurify@$DOMPURIFY" dompurify

rm -rf "$out"
mkdir -p "$out"/{marked,marked-katex,katex/fonts,highlight,dompurify}

cp "$work/marked/lib/marked.umd.js" "$work/marked/LICENSE" "$out/marked/"
cp "$work/marked-katex/lib/index.umd.js" "$work/marked-katex/LICENSE" "$out/marked-katex/"
cp "$work/katex/dist/katex.min.js" "$work/katex/LICENSE" "$out/katex/"
cp "$work"/katex/dist/fonts/*.woff2 "$out/katex/fonts/"
# woff2 only: drop the woff and ttf fallbacks from each @font-face.
sed -E 's/,url\(fonts\/[A-Za-z0-9_-]+\.(woff|ttf)\) format\("(woff|truetype)"\)//g' \
  "$work/katex/dist/katex.min.css" >"$out/katex/katex.min.css"
cp "$work/hljs/highlight.min.js" "$work/hljs/LICENSE" "$out/highlight/"
cp "$work/hljs/styles/github.min.css" "$work/hljs/styles/github-dark.min.css" "$out/highlight/"
cp "$work/dompurify/dist/purify.min.js" "$work/dompurify/LICENSE" "$out/dompurify/"

# Strip source-map comments: the maps are not shipped.
sed -i -E '/^\/\/# sourceMappingURL=/d' "$out"/*/*.js

if grep -q 'format("woff")\|format("truetype")' "$out/katex/katex.min.css"; then
  echo "refresh-web-vendor: KaTeX's CSS still names woff/ttf fonts" >&2
  exit 1
fi

cat >"$out/VERSIONS" <<EOF
Third-party files of the web UI, fetched from the npm registry by scripts/refresh-web-vendor.sh.
Each directory holds the package's own LICENSE.

marked                  $MARKED        MIT           marked/marked.umd.js
marked-katex-extension  $MARKED_KATEX  MIT           marked-katex/index.umd.js
katex                   $KATEX       MIT           katex/katex.min.js, katex.min.css, fonts/*.woff2
@highlightjs/cdn-assets $HLJS       BSD-3-Clause  highlight/highlight.min.js, github(-dark).min.css
dompurify               $DOMPURIFY        Apache-2.0 or MPL-2.0 (used under Apache-2.0)  dompurify/purify.min.js
EOF
du -sh "$out"
