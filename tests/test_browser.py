"""The generation widget in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

The test writes a tiny checkpoint and a one-cell notebook into a temporary folder, starts `jupyter lab` on a free
port with a random token, opens the notebook, runs it, clicks Generate and reads the streamed text back from the
page. The server (and every process it started) is always stopped. When the test passes it saves a picture of the
widget to nbs/images/generate_widget.png (the generation chapter shows it), unless the picture there looks the same. Chromium comes from Debian (`apt-get install
chromium`, which `make test` does); without it the test skips and says so."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, small_bpe, tiny_checkpoint

import vibenanochat.checkpoint as checkpoint
import vibenanochat.generate as G
import vibenanochat.plumbing as plumbing

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPT, MAX_TOKENS = "Return a new list", 40
SCREENSHOT = REPO / "nbs" / "images" / "generate_widget.png"     # a committed picture, shown in the generation chapter


def small_png(png: bytes) -> bytes:
    "The screenshot with its colours reduced to a 64-entry palette: the same picture at a fraction of the bytes."
    import io
    from PIL import Image
    img, out = Image.open(io.BytesIO(png)).convert("RGB"), io.BytesIO()
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def differs(old: bytes, new: bytes, tolerance: float = 0.02) -> bool:
    "True unless both pictures have the same size and fewer than `tolerance` of their pixels differ (e.g. the tok/s figure)."
    import io
    from PIL import Image, ImageChops
    a, b = (Image.open(io.BytesIO(x)).convert("RGB") for x in (old, new))
    if a.size != b.size: return True
    changed = sum(ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 16 else 0).histogram()[255:])
    return changed > tolerance * a.size[0] * a.size[1]


def save_screenshot(png: bytes, dest: Path = SCREENSHOT) -> str:
    "Write the widget's picture to `dest` (atomically) unless the one there looks the same; never fails the test."
    try:
        png = small_png(png)
        if dest.exists() and not differs(dest.read_bytes(), png): return f"{dest} unchanged"
        plumbing.atomic_write(dest, png)
        return f"wrote {dest} ({len(png):,} bytes)"
    except (OSError, ImportError, ValueError) as e:     # a read-only checkout, no Pillow: the test is about the widget
        return f"{dest} not written ({type(e).__name__}: {e})"


def find_chromium() -> str:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and Path(c).exists(): return c
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): run `apt-get install -y chromium` as root, "
                "or `make test`, which installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    "Every live process below `pid`, from /proc (kernels run in their own session, so a process-group kill misses them)."
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c); todo.append(c)
    return out


def stop_server(proc: subprocess.Popen) -> list[int]:
    "SIGTERM the server and everything it started; SIGKILL whatever is still there after 10 s. Returns their pids."
    pids = descendants(proc.pid)
    for pid in [proc.pid] + pids:
        try: os.kill(pid, signal.SIGTERM)
        except ProcessLookupError: pass
    try: proc.wait(10)
    except subprocess.TimeoutExpired: pass
    for pid in [proc.pid] + pids:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    proc.wait(5)
    return pids


def alive(pid: int) -> bool:
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError: return False


def visible_text(s: str) -> str:
    "What survives HTML's text model: CR becomes LF, NUL becomes U+FFFD, other control characters are dropped."
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    return "".join(ch for ch in s if ch.isprintable() or ch in "\n\t")


@pytest.mark.timeout(300)
def test_widget_generates_in_a_real_browser(tmp_path):
    chromium = find_chromium()
    api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    sync_playwright, PlaywrightTimeout = api.sync_playwright, api.TimeoutError
    work = tmp_path / "lab"; work.mkdir()
    # a depth-1 GPT with spread logits and a 300-token BPE, in a run folder laid out the way the trainer writes one
    tiny_checkpoint(checkpoint.step_dir(work / "run", 1), small_bpe(300, "browserbpe"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from vibenanochat.generate import GenerationWidget\n"
        f"w = GenerationWidget.from_checkpoint('run', device='cpu', prompt={PROMPT!r}, max_tokens={MAX_TOKENS}, temperature=0.0)\n"
        "w")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, work / "demo.ipynb")
    model, enc, _ = checkpoint.load_model_and_tokenizer(work / "run")
    expected = G.generate(model, enc, PROMPT, MAX_TOKENS, temperature=0.0)[0]
    assert expected

    port, token = free_port(), secrets.token_hex(16)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), IPYTHONDIR=str(tmp_path / "ipython"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), JUPYTER_PLATFORM_DIRS="1")
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [str(bin_dir / "jupyter"), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--notebook-dir={work}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    page, started, shot = None, [], None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, f"jupyter lab exited early:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read(); break
            except OSError:
                assert time.time() < deadline, f"jupyter lab did not answer in 60 s:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROME_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(f"{base}/lab/tree/demo.ipynb?token={token}")
                page.wait_for_function("() => /\\| Idle/.test(document.body.innerText)", timeout=90_000)   # kernel ready
                cell = page.locator(".jp-Notebook .jp-CodeCell").first
                for attempt in range(3):                      # a key press can land before the kernel is wired up
                    cell.locator(".cm-content").click()
                    page.keyboard.press("Shift+Enter")
                    try:
                        page.wait_for_function("c => !/\\[ \\]/.test(c.querySelector('.jp-InputPrompt').textContent)",
                                               arg=cell.element_handle(), timeout=10_000)
                        break
                    except PlaywrightTimeout:
                        assert attempt < 2, "the notebook cell never started running"
                started = descendants(server.pid)                                        # the kernel, among others
                button = page.locator("button.vnc-generate")
                button.wait_for(state="visible", timeout=90_000)                        # kernel start + import torch
                assert page.locator(".vnc-status").inner_text() == "ready"
                button.click()
                page.wait_for_function("() => (document.querySelector('.vnc-status') || {}).textContent?.includes('stopped by')",
                                       timeout=60_000)
                status = page.locator(".vnc-status").inner_text()
                shown = page.locator(".vnc-output .vnc-completion").text_content()
                prompt_shown = page.locator(".vnc-output b").text_content()
                bars = page.locator(".vnc-chart tr").count()
                print(f"browser: {status!r}; text {shown[:60]!r}...")
                assert "stopped by" in status and prompt_shown == PROMPT
                assert visible_text(shown) == visible_text(expected), (shown, expected)
                assert bars == 10
                assert page.locator("button.vnc-generate").is_enabled()
                shot = page.locator(".vnc-widget").screenshot()                       # the widget only, after it generated
            except Exception:
                if page is not None:
                    page.screenshot(path=str(tmp_path / "failure.png"))
                    print("screenshot:", tmp_path / "failure.png", "\npage text:", page.inner_text("body")[-2000:])
                raise
            finally:
                browser.close()
    finally:
        started += stop_server(server)
        log.close()
    time.sleep(0.5)
    assert server.poll() is not None and not [p for p in started if alive(p)], "a Jupyter process outlived the test"
    print(save_screenshot(shot))                                                  # only once everything passed
