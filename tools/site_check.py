"""Build the book's website and check every page in a headless browser (`make site-check`).

    .venv-site/bin/python tools/site_check.py [--no-build] [--chromium /usr/bin/chromium]

Builds the site with `jupyter-book build --all -W -n --keep-going .`, serves `_build/html` on
127.0.0.1 (a free port) and loads every page with Chromium (driven by Playwright), at desktop
width (1280 px) and at phone width (390 px). It fails (exit 1), listing page and problem, on:

- a build that fails (warnings are errors under -W);
- a broken internal link: an `<a href>` to a page of the site that does not exist, or to an
  anchor (`#...`) that the target page does not have; a page resource (image, script, style)
  the server answers with an error;
- a MathJax error: an `mjx-merror` element, a formula left untypeset, or an error on the
  browser console (or an uncaught script error);
- a request that leaves 127.0.0.1: it is blocked and recorded (the site must work offline);
- horizontal overflow at 390 px (`scrollWidth > clientWidth` of the document), reported with
  the widest element that sticks out of the page;
- a code cell whose lines are all at most 88 characters but that scrolls sideways at 1280 px
  (longer lines are listed as notes: they scroll by design).

Screenshots of the visible part of every page (viewport shots: full-page shots of long pages
come out garbled), at both widths, and of the first figure and the first display formula of
each page, go to `_build/site-check/`, with `report.txt` and `report.json`.

It needs Chromium (Debian: `apt-get install chromium fonts-noto-cjk`) and the Python package
`playwright` (no browser download: it drives the system Chromium); `make site-check` installs
both, the package in its own environment `.venv-site`, outside the book's locked `.venv`.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
OUT = ROOT / "_build" / "site-check"
BUILD = ["build", "--all", "-W", "-n", "--keep-going", "."]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "mobile": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
MAX_CODE_LINE = 88
# Pages that are templates or copies, not pages of the book.
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}


# --------------------------------------------------------------------------------------------
# The site on disk: pages and the anchors each one defines.

class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            elif name == "name" and tag == "a" and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def pages(site: Path) -> list[str]:
    """Every HTML page of the site, as a path relative to its root."""
    found = []
    for path in sorted(site.rglob("*.html")):
        relative = path.relative_to(site)
        if relative.parts[0] in SKIP_DIRS:
            continue
        found.append(relative.as_posix())
    return found


def local_target(site: Path, path: str) -> Path | None:
    """The file the server sends for a URL path, or None."""
    candidate = (site / unquote(path).lstrip("/")).resolve()
    if site.resolve() not in (candidate, *candidate.parents):
        return None
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


def check_link(site: Path, origin: str, href: str) -> str | None:
    """None if an absolute URL of the site exists (with its anchor); else what is wrong."""
    url, fragment = urldefrag(href)
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}" != origin:
        return None  # another site (checked by nobody: the check runs offline)
    target = local_target(site, parts.path)
    if target is None:
        return f"no such page {parts.path}"
    if fragment and target.suffix == ".html" and unquote(fragment) not in anchors_of(target):
        return f"{parts.path} has no anchor #{unquote(fragment)}"
    return None


# --------------------------------------------------------------------------------------------
# A quiet static server on 127.0.0.1.

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D102 - silence the access log
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --------------------------------------------------------------------------------------------
# In the browser.

MATHJAX_DONE = """async () => {
  if (!window.MathJax || !window.MathJax.startup) {
    return document.querySelector('.math') ? 'MathJax did not load' : null;
  }
  try { await window.MathJax.startup.promise; } catch (e) { return 'MathJax failed: ' + e; }
  return null;
}"""

MATH_PROBLEMS = """() => {
  const out = [];
  for (const e of document.querySelectorAll('mjx-merror, [data-mjx-error]')) {
    out.push('MathJax error: ' + (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120));
  }
  for (const e of document.querySelectorAll('span.math, div.math')) {
    if (!e.querySelector('mjx-container')) {
      out.push('formula not typeset: ' + e.textContent.trim().slice(0, 120));
    }
  }
  return out;
}"""

LINKS = """() => Array.from(document.querySelectorAll('a[href]'), a => [a.href, a.getAttribute('href'),
    (a.textContent || '').trim().slice(0, 60)])"""

OVERFLOW = """() => {
  const doc = document.documentElement;
  const width = doc.clientWidth;
  if (doc.scrollWidth <= width) return null;
  const clips = (el) => {
    for (let p = el.parentElement; p && p !== document.body && p !== doc; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (s.overflowX !== 'visible' || s.display === 'none') return true;
    }
    return false;
  };
  let worst = null;
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= width + 1) continue;
    if (getComputedStyle(el).position === 'fixed' || clips(el)) continue;
    if (!worst || r.right > worst.right + 0.5 ||
        (Math.abs(r.right - worst.right) <= 0.5 && el.contains(worst.el))) {
      worst = {el, right: r.right};
    }
  }
  let where = '', text = '', tag = '';
  if (worst) {
    const el = worst.el;
    tag = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
          (el.classList.length ? '.' + Array.from(el.classList).join('.') : '');
    const path = [];
    for (let p = el.parentElement; p && p !== document.body && path.length < 4; p = p.parentElement) {
      path.unshift(p.tagName.toLowerCase() + (p.id ? '#' + p.id : '') +
                   (p.classList.length ? '.' + p.classList[0] : ''));
    }
    where = path.join(' > ');
    const section = el.closest('section[id]');
    if (section) where = '#' + section.id + ': ' + where;
    text = (el.textContent || el.getAttribute('src') || '').replace(/\\s+/g, ' ').trim().slice(0, 100);
  }
  return {scrollWidth: doc.scrollWidth, clientWidth: width, tag, where, text,
          right: worst ? Math.round(worst.right) : null};
}"""

CODE_CELLS = """(limit) => {
  const out = [];
  for (const pre of document.querySelectorAll('div.cell_input pre')) {
    const lines = pre.textContent.replace(/\\n$/, '').split('\\n');
    const longest = Math.max(...lines.map(l => l.length));
    if (pre.scrollWidth > pre.clientWidth + 1) {
      const line = lines.find(l => l.length === longest);
      out.push({longest, limit, line: line.slice(0, 100),
                scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth});
    }
  }
  return out;
}"""


REFRESH = re.compile(r'<meta[^>]+http-equiv="refresh"[^>]+url=([^"]+)"', re.IGNORECASE)


def redirect_of(site: Path, page: str) -> str | None:
    """The target of a page that only redirects (meta refresh), relative to the site's root."""
    match = REFRESH.search((site / page).read_text(encoding="utf-8", errors="replace"))
    if not match:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(page), match.group(1).strip()))


SCROLL_TO = """(selector) => {
  for (const el of document.querySelectorAll(selector)) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden') {
      window.scrollTo(0, window.scrollY + r.top - 80);
      return true;
    }
  }
  return false;
}"""


WIDE_MATH = """() => Array.from(document.querySelectorAll('div.math'))
  .map(e => e.querySelector('mjx-container') || e)
  .filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => [e.scrollWidth, e.clientWidth, (e.closest('section[id]') || {}).id || '',
             (e.querySelector('mjx-assistive-mml') || e).textContent.replace(/\\s+/g, ' ').trim().slice(0, 80)])"""


def slug(page: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", page.removesuffix(".html"))


def check_pages(site: Path, origin: str, chromium: str, out: Path) -> tuple[dict, dict, list]:
    from playwright.sync_api import sync_playwright

    problems: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    shots: list[str] = []
    link_cache: dict[str, str | None] = {}

    def add(where: dict[str, list[str]], page: str, text: str) -> None:
        if text not in where.setdefault(page, []):
            where[page].append(text)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            for name, options in VIEWPORTS.items():
                context = browser.new_context(**options, service_workers="block")
                current = {"page": ""}

                def route(route, request, current=current):
                    if request.url.startswith(origin + "/") or request.url == origin:
                        route.continue_()
                    elif request.url.startswith(("data:", "blob:")):
                        route.continue_()
                    else:
                        add(problems, current["page"], f"request leaving 127.0.0.1 (blocked): {request.url[:160]}")
                        route.abort()

                context.route("**/*", route)
                for page_path in pages(site):
                    current["page"] = page_path
                    target = redirect_of(site, page_path)
                    if target is not None:  # the root index.html only points to the landing page
                        if name == "desktop" and (why := check_link(site, origin, f"{origin}/{target}")):
                            add(problems, page_path, f"redirect to {target}: {why}")
                        continue
                    tab = context.new_page()
                    # (a failed load is reported as a blocked request or a broken resource instead)
                    tab.on("console", lambda msg, p=page_path: msg.type == "error"
                           and not msg.text.startswith("Failed to load resource")
                           and add(problems, p, f"console error ({name}): {msg.text[:200]}"))
                    tab.on("pageerror", lambda err, p=page_path: add(
                        problems, p, f"script error ({name}): {str(err)[:200]}"))
                    tab.on("response", lambda resp, p=page_path: resp.status >= 400 and resp.url.startswith(
                        origin) and add(problems, p, f"broken resource: {resp.status} {resp.url[len(origin):]}"))
                    tab.goto(f"{origin}/{page_path}", wait_until="load", timeout=120_000)
                    failure = tab.evaluate(MATHJAX_DONE)
                    if failure:
                        add(problems, page_path, failure)
                    tab.evaluate("document.fonts.ready.then(() => true)")
                    for text in tab.evaluate(MATH_PROBLEMS):
                        add(problems, page_path, text)
                    if name == "desktop":
                        for absolute, raw, label in tab.evaluate(LINKS):
                            if absolute not in link_cache:
                                link_cache[absolute] = check_link(site, origin, absolute)
                            if link_cache[absolute]:
                                add(problems, page_path,
                                    f"broken link '{raw}' ({label!r}): {link_cache[absolute]}")
                        for cell in tab.evaluate(CODE_CELLS, MAX_CODE_LINE):
                            text = (f"code line of {cell['longest']} characters scrolls at 1280 px "
                                    f"({cell['scrollWidth']} > {cell['clientWidth']} px): {cell['line']!r}")
                            add(problems if cell["longest"] <= MAX_CODE_LINE else notes, page_path, text)
                        for wide, width, section, formula in tab.evaluate(WIDE_MATH):
                            add(notes, page_path, f"display formula wider than the column at 1280 px "
                                f"({wide} > {width} px, it scrolls) in #{section}: {formula!r}")
                    else:
                        overflow = tab.evaluate(OVERFLOW)
                        if overflow:
                            add(problems, page_path,
                                f"horizontal overflow at 390 px: the page is {overflow['scrollWidth']} px wide; "
                                f"widest element {overflow['tag']} (right edge {overflow['right']} px) in "
                                f"{overflow['where']}: {overflow['text']!r}")
                    # Viewport screenshots: the top of the page, the first figure, the first formula.
                    base = f"{slug(page_path)}-{name}"
                    tab.screenshot(path=str(out / f"{base}.png"))
                    shots.append(f"{base}.png")
                    for what, selector in (("figure", "div.cell_output img, figure img"),
                                           ("math", "div.math, mjx-container[display='true']")):
                        if not tab.evaluate(SCROLL_TO, selector):
                            continue
                        tab.wait_for_timeout(100)
                        tab.screenshot(path=str(out / f"{base}-{what}.png"))
                        shots.append(f"{base}-{what}.png")
                    tab.close()
                context.close()
        finally:
            browser.close()
    return problems, notes, shots


def build(jupyter_book: str) -> tuple[bool, list[str]]:
    """Run the site build; (succeeded, the warning lines it printed)."""
    run = subprocess.run([jupyter_book, *BUILD], cwd=ROOT, capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
    warnings = [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line]
    if run.returncode != 0 and not warnings:
        warnings = text.strip().splitlines()[-20:]
    return run.returncode == 0, warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-build", action="store_true", help="check _build/html as it is")
    parser.add_argument("--jupyter-book", default=str(ROOT / ".venv" / "bin" / "jupyter-book"))
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--site", type=Path, default=SITE, help="the built site (with --no-build)")
    args = parser.parse_args(argv)
    site = args.site.resolve()

    start = time.monotonic()
    problems: dict[str, list[str]] = {}
    if not args.no_build:
        print("site-check: building the site ...", flush=True)
        shutil.rmtree(SITE, ignore_errors=True)  # no page left over from an earlier build
        ok, warnings = build(args.jupyter_book)
        if not ok:
            problems["(build)"] = [f"jupyter-book build failed: {w}" for w in warnings] or ["build failed"]
    if not (site / "index.html").is_file():
        print(f"site-check: no site in {site}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    server, origin = serve(site)
    try:
        print(f"site-check: checking {len(pages(site))} pages at {origin} with {args.chromium} ...", flush=True)
        found, notes, shots = check_pages(site, origin, args.chromium, OUT)
    finally:
        server.shutdown()
    for page, items in found.items():
        problems.setdefault(page, []).extend(items)
    problems = {page: items for page, items in problems.items() if items}
    seconds = time.monotonic() - start

    lines = []
    for page, items in sorted(problems.items()):
        lines.append(f"FAIL {page}")
        lines += [f"  - {item}" for item in items]
    for page, items in sorted(notes.items()):
        lines.append(f"note {page}")
        lines += [f"  - {item}" for item in items]
    count = sum(len(items) for items in problems.values())
    lines.append(f"site-check: {count} problem{'s' * (count != 1)} on {len(problems)} page"
                 f"{'s' * (len(problems) != 1)}; {len(shots)} screenshots in "
                 f"{OUT.relative_to(ROOT)}/; {seconds:.0f} s")
    report = "\n".join(lines)
    print(report)
    (OUT / "report.txt").write_text(report + "\n", encoding="utf-8")
    (OUT / "report.json").write_text(json.dumps({"problems": problems, "notes": notes, "screenshots": shots,
                                                 "seconds": round(seconds, 1)}, ensure_ascii=False, indent=1),
                                     encoding="utf-8")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
