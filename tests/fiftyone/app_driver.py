"""Driving the FiftyOne App in Debian's chromium with Playwright, for ``test_app_browser.py``.

- ``write_meta_checkpoints``: random-init SAM2 hiera-t / DINOv2 ViT-S/14 files in Meta's formats (what
  ``NTT_CHECKPOINT_DIR`` holds), made as ``tests/core/test_models.py`` makes them.
- ``AppServer``: ``fo.launch_app`` in a subprocess (own process group) on 127.0.0.1, on the test's database.
- ``AppDriver``: the UI steps (operator browser, operator forms, grid selection, sample modal, panels), each
  step's screenshot numbered in an artifacts folder. Selectors are FiftyOne 1.22's ``data-cy`` attributes and
  visible labels; a form counts as accepted when its Execute button is enabled. The In-App Annotation steps (the
  sample modal's Annotate tab: label schema, brush painting, deleting, drawing) wait for the App's own saves, the
  sample PATCH requests each gesture sends (``test_app_annotate.py``).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

# Offline machine: without the background-networking flags chromium keeps dialling out (refused connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Requests that leave the machine (web fonts, the code editor's CDN) are refused at once, online or not, so
# every run sees the same App.
EXTERNAL = re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/])[a-z]+://")
PROGRESS = re.compile(r"\d+%|Executing")  # a run's progress bar: streamed steps, or the App's "Executing..."
MIDWAY = re.compile(r"\b[1-9]\d?%")  # a streamed run between 1 % and 99 %
SAM2_FILE, DINOV2_FILE = "sam2_hiera_tiny.pt", "dinov2_vits14_pretrain.pth"


def find_chromium() -> str | None:
    """Debian's chromium (``NTT_CHROMIUM`` overrides), or None."""
    explicit = os.environ.get("NTT_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("chromium")


def write_meta_checkpoints(folder: Path) -> Path:
    """Random-init checkpoints in Meta's original formats, as ``NTT_CHECKPOINT_DIR`` would hold the real ones:
    ``sam2_hiera_tiny.pt`` (``{"model": state_dict}``) and ``dinov2_vits14_pretrain.pth`` (plain state dict
    at 518 px with a ``mask_token``). Seeded: the same files every run."""
    import timm
    import torch

    from ntt.models.sam2 import build_sam2_model

    folder.mkdir(parents=True, exist_ok=True)
    sam2 = build_sam2_model("sam2_hiera_t", 1024, None, seed=5)
    torch.save({"model": sam2.model.state_dict()}, folder / SAM2_FILE)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0)
    state = dict(vit.state_dict())
    state["mask_token"] = torch.zeros(1, vit.embed_dim)
    torch.save(state, folder / DINOV2_FILE)
    return folder


def fresh_artifacts(name: str) -> Path:
    """``$NTT_TEST_ARTIFACTS/<name>`` (default ``<repo>/test-artifacts/<name>``), emptied of an earlier run's
    screenshots, logs and pages."""
    root = os.environ.get("NTT_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts"
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.png"), *folder.glob("*.log"), *folder.glob("*.html")]:
        old.unlink()
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_port() -> str:
    """The port of the ``mongod`` this process uses, for ``FIFTYONE_PRIVATE_DATABASE_PORT``: FiftyOne hands its own
    children the database that way; without it the App would attach to whichever ``mongod`` service of this user
    it finds first (another test run's, possibly)."""
    import fiftyone.core.odm.database as food

    return str(food.get_db_client().address[1])


_APP = """
import sys
import fiftyone as fo

session = fo.launch_app(fo.load_dataset(sys.argv[1]), remote=True, address="127.0.0.1", port=int(sys.argv[2]))
print("NTT-APP-LAUNCHED", flush=True)
session.wait(-1)
"""


class AppServer:
    """The App on ``http://127.0.0.1:<port>`` serving ``dataset_name``, in a subprocess with its own process group
    (the App's server runs there as a child, and the operators' immediate runs in that server)."""

    def __init__(self, dataset_name: str, env: dict[str, str], log_path: Path):
        self.dataset_name = dataset_name
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float = 150) -> AppServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _APP, self.dataset_name, str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the App exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/fiftyone", timeout=5) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - started
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the App did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self, wait: float = 15) -> None:
        """End the App's process group (only it: the database belongs to the test process): SIGTERM, then
        SIGKILL for what is left after ``wait`` seconds."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the main process: a zombie would keep the group "alive"
                if not _group_alive(self.proc.pid):
                    return
                time.sleep(0.2)
        self.proc.poll()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UIError(AssertionError):
    """The App did not do what a step expected (the message holds what it showed instead)."""


class AppDriver:
    """The UI steps on a Playwright ``page`` of the App; ``shot`` writes numbered screenshots to ``artifacts``."""

    def __init__(self, page, artifacts: Path):
        self.page = page
        self.artifacts = artifacts
        self.shots: list[Path] = []
        self.started = time.monotonic()

    # ---- general
    def shot(self, name: str) -> Path:
        """A numbered screenshot of the page; its name and the time since the start go to ``steps.log``."""
        path = self.artifacts / f"{len(self.shots) + 1:02d}_{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)
        with open(self.artifacts / "steps.log", "a") as log:
            log.write(f"{time.monotonic() - self.started:7.1f} s  {path.name}\n")
        return path

    @staticmethod
    def text_of(locator, timeout: float = 2) -> str:
        """The text of ``locator``'s first match, "" when there is none or it went away meanwhile (the App swaps
        its modals: a plain ``inner_text`` would wait the default 30 s for a detached one)."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            return locator.first.inner_text(timeout=timeout * 1000) if locator.count() else ""
        except PlaywrightError:
            return ""

    def by_cy(self, name: str, within=None):
        return (within or self.page).locator(f'[data-cy="{name}"]')

    def open_dataset(self, url: str, timeout: float = 120) -> None:
        """Load the dataset page and wait for its grid's tiles; dismiss the App's promotional pop-up."""
        self.page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        self.by_cy("looker").first.wait_for(state="visible", timeout=timeout * 1000)
        self.page.wait_for_timeout(1000)
        dismiss = self.page.get_by_role("button", name="Dismiss", exact=True)
        if dismiss.count() and dismiss.first.is_visible():
            dismiss.first.click()

    def settle(self, locator, timeout: float = 20, quiet: float = 0.8) -> str:
        """Wait until ``locator``'s text stops changing (a dynamic form re-resolving); return the text."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            text = self.text_of(locator)
            if text == last:
                return text
            last = text
            self.page.wait_for_timeout(int(quiet * 1000))
        return last or ""

    def errors_shown(self) -> list[str]:
        """Error notifications and operator errors the App is showing."""
        texts = [self.text_of(a) for a in self.page.locator(".notistack-MuiContent-error").all()]
        for cy in ("operators-prompt-modal", "operators-prompt-view-modal"):
            text = self.text_of(self.by_cy(cy))
            if "Error occurred during operator execution" in text:
                texts.append(text)
        return [t for t in texts if t]

    # ---- grid
    def tiles(self):
        return self.by_cy("looker", self.by_cy("fo-grid"))

    def select_tiles(self, indices) -> None:
        for i in indices:
            tile = self.tiles().nth(i)
            tile.hover()
            self.by_cy("looker-checkbox-", tile).click()
        self.page.wait_for_timeout(500)

    def clear_selection(self) -> None:
        self.by_cy("action-manage-selected").click()
        self.page.get_by_text("Clear selected samples", exact=True).click()
        self.page.wait_for_timeout(500)

    def show_sidebar_field(self, path: str, within=None) -> None:
        """Tick a field's visibility checkbox in the sidebar (e.g. ``tags`` to show sample tags on tiles)."""
        box = self.by_cy(f"checkbox-{path}", within)
        if "Mui-checked" not in (box.get_attribute("class") or ""):
            box.click()

    def hide_sidebar_field(self, path: str, within=None) -> None:
        box = self.by_cy(f"checkbox-{path}", within)
        if "Mui-checked" in (box.get_attribute("class") or ""):
            box.click()

    # ---- operator browser
    def operator_browser(self, search: str) -> list[tuple[str, str]]:
        """Open the operator browser (backtick key), type ``search``; return the listed (label, name) pairs."""
        browser = self.by_cy("operators-browser")
        if not browser.count():
            self.page.locator("body").press("`")
            browser.wait_for(state="visible", timeout=15_000)
        self.by_cy("operators-browser-search", browser).fill(search)
        self.page.wait_for_timeout(500)
        lines = [line.strip() for line in browser.inner_text().splitlines() if line.strip()]
        return list(zip(lines[0::2], lines[1::2], strict=False))

    def close_operator_browser(self) -> None:
        if self.by_cy("operators-browser").count():
            self.page.keyboard.press("Escape")
            self.by_cy("operators-browser").wait_for(state="detached", timeout=10_000)

    def open_operator(self, label: str, timeout: float = 60):
        """Open ``label``'s form from the operator browser; return the form (prompt modal), settled."""
        self.operator_browser(label.split(":")[0])
        browser = self.by_cy("operators-browser")
        entry = browser.get_by_text(label, exact=True)
        if not entry.count():
            raise UIError(f"operator {label!r} is not in the operator browser:\n{self.text_of(browser)}")
        entry.first.click()
        form = self.by_cy("operators-prompt-modal")
        self.execute_button(form).wait_for(state="visible", timeout=timeout * 1000)
        self.settle(form)
        return form

    # ---- operator forms
    @staticmethod
    def execute_button(form):
        return form.get_by_role("button", name="Execute", exact=True)

    def field(self, form, label: str):
        """The innermost form item holding the text ``label`` (a property's label)."""
        items = form.locator(".MuiGrid-item").filter(has=self.page.get_by_text(label, exact=True))
        if not items.count():
            raise UIError(f"no form field labelled {label!r}:\n{self.text_of(form)}")
        return items.last

    def choose(self, form, value: str) -> None:
        """Pick the radio choice whose value is ``value`` (a preset, a target view ...)."""
        radio = form.locator(f'input[type="radio"][value="{value}"]')
        if not radio.count():
            raise UIError(f"no choice {value!r} in the form:\n{self.text_of(form)}")
        radio.check(force=True)
        self.settle(form)
        if not radio.is_checked():
            raise UIError(f"the form did not keep the choice {value!r}:\n{self.text_of(form)}")

    def pick(self, form, label: str, value: str) -> None:
        """Pick ``value`` in the dropdown under ``label``."""
        self.field(form, label).get_by_role("combobox").first.click()
        self.page.get_by_role("option", name=value, exact=True).first.click()
        self.settle(form)

    def tick(self, form, label: str, on: bool = True) -> None:
        box = form.locator("label").filter(has_text=label).locator('input[type="checkbox"]')
        if not box.count():
            raise UIError(f"no checkbox {label!r} in the form:\n{self.text_of(form)}")
        box.first.set_checked(on, force=True)
        self.settle(form)

    def type_text(self, form, label: str, value: str) -> None:
        """Replace the text of the input under ``label``."""
        box = self.field(form, label).locator("input, textarea").first
        box.fill(value)
        box.press("Tab")
        self.settle(form)
        if box.input_value() != value:
            raise UIError(f"the form did not keep {label!r} = {value!r} (shows {box.input_value()!r})")

    def code_text(self, form, text: str, timeout: float = 8) -> bool:
        """Put ``text`` in the form's code/JSON field: a plain text box, or the App's code editor (Monaco) once
        it has loaded. False when neither can be typed into within ``timeout`` (the editor's code comes from a
        CDN, so it never loads offline)."""
        editor = form.locator(".monaco-editor")
        # MUI's multiline fields carry a hidden read-only twin textarea (for sizing): skip it, and Monaco's own
        plain = form.locator('textarea:not(.inputarea):not([aria-hidden="true"]):not([readonly])')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if editor.count():
                editor.first.click()
                self.page.keyboard.press("ControlOrMeta+A")
                self.page.keyboard.press("Delete")
                self.page.keyboard.insert_text(text)
                break
            if plain.count():
                plain.last.fill(text)
                plain.last.press("Tab")
                self.settle(form)
                if plain.last.input_value() != text:
                    raise UIError(f"the form did not keep {text!r} (shows {plain.last.input_value()!r})")
                break
            self.page.wait_for_timeout(500)
        else:
            return False
        self.settle(form)
        return True

    def expect_runnable(self, form, timeout: float = 20) -> None:
        """Fail unless the form accepts its input: Execute enabled (a form with a problem disables it)."""
        button = self.execute_button(form)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if button.is_enabled():
                return
            self.page.wait_for_timeout(500)
        raise UIError(f"the form refused its input (Execute stays disabled):\n{self.text_of(form)}")

    def execute(self, form, expect: str, timeout: float = 180, progress_shot: str | None = None) -> str:
        """Click Execute (an immediate run) and wait for the operator's output: a Close / Done button, no
        progress bar, and ``expect`` (a value the output shows) in its text; return that text. Fails at once on an
        error notification or an operator error; ``progress_shot`` names a screenshot of the progress bar."""
        self.expect_runnable(form)
        self.execute_button(form).click()
        deadline = time.monotonic() + timeout
        progress_path = None
        while time.monotonic() < deadline:
            errors = self.errors_shown()
            if errors:
                raise UIError("the operator failed in the App:\n" + "\n---\n".join(errors))
            modals = [self.by_cy(cy) for cy in ("operators-prompt-view-modal", "operators-prompt-modal")]
            modals = [m for m in modals if m.count()]
            running = any(m.get_by_role("progressbar").count() for m in modals)
            texts = [self.text_of(m) for m in modals]
            if progress_shot and any(PROGRESS.search(t) for t in texts):
                progress_path = self.shot(progress_shot)
                progress_shot = None
            elif progress_path and any(MIDWAY.search(t) for t in texts):
                self.page.screenshot(path=str(progress_path))  # a later, more telling moment of the same step
                progress_path = None
            for modal in modals:
                closes = modal.get_by_role("button", name=re.compile(r"^(Close|Done)$"))
                if not running and closes.count() and not self.execute_button(modal).count():
                    text = self.settle(modal)
                    if expect in text:
                        return text
            self.page.wait_for_timeout(500)
        raise UIError(f"no output showing {expect!r} within {timeout:.0f} s; the App shows:\n{self.visible_text()}")

    def close_output(self) -> None:
        for name in ("Done", "Close"):
            button = self.page.get_by_role("button", name=name, exact=True)
            if button.count() and button.first.is_visible():
                button.first.click()
                break
        for cy in ("operators-prompt-view-modal", "operators-prompt-modal"):
            self.by_cy(cy).wait_for(state="detached", timeout=15_000)

    def visible_text(self) -> str:
        return self.text_of(self.page.locator("body"))[-3000:]

    # ---- sample modal and panels
    def open_sample(self, index: int):
        self.tiles().nth(index).click()
        modal = self.by_cy("modal")
        self.by_cy("modal-looker-container", modal).wait_for(state="visible", timeout=30_000)
        self.page.wait_for_timeout(1500)
        return modal

    def click_label(self, modal, sample, field: str):
        """Select a label of ``field`` in the open sample modal by clicking the pixel deepest inside the part of
        its mask that no other label of the field covers (the image is drawn centred, fitted to the canvas);
        returns the label clicked."""
        import numpy as np
        from scipy import ndimage

        from ntt.fo.references import full_image_mask

        width, height = sample.metadata.width, sample.metadata.height
        dets = sample[field].detections
        masks = [full_image_mask(d, width, height) for d in dets]
        alone = [m & (np.sum(masks, axis=0) == 1) for m in masks]
        depth = [ndimage.distance_transform_edt(m) for m in alone]
        k = int(np.argmax([d.max() for d in depth]))
        y, x = np.unravel_index(np.argmax(depth[k]), depth[k].shape)
        box = self.by_cy("modal-looker-container", modal).bounding_box()
        scale = min(box["width"] / width, box["height"] / height)
        self.page.mouse.click(
            box["x"] + (box["width"] - width * scale) / 2 + (x + 0.5) * scale,
            box["y"] + (box["height"] - height * scale) / 2 + (y + 0.5) * scale,
        )
        self.page.wait_for_timeout(1000)
        return dets[k]

    def close_sample(self) -> None:
        modal = self.by_cy("modal")
        for _ in range(3):
            if not modal.count():
                return
            self.by_cy("modal-looker-container", modal).hover()
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(700)
        if modal.count():
            raise UIError("the sample modal did not close")

    def open_panel(self, option: str):
        """Open a panel from the grid's "+" tab (``option``: the panel's name, e.g. model_evaluation_panel_builtin)."""
        self.by_cy("new-panel-btn").first.click()
        self.by_cy(f"new-panel-option-{option}").click()
        content = self.by_cy(f"panel-content-{option}")
        content.wait_for(state="visible", timeout=30_000)
        return content

    # ---- In-App Annotation: the sample modal's "Annotate" tab (FiftyOne >= 1.13)
    # Every edit is saved at once, by itself: each gesture (a brush stroke, a deletion, a drawn box, a class picked)
    # sends one JSON-patch PATCH of the sample (``/dataset/<id>/sample/<id>``, with ``If-Match`` on its
    # ``last_modified_at``); there is no save button. The steps below wait for those requests' answers.
    def _track_patches(self) -> None:
        if getattr(self, "_patches", None) is not None:
            return
        self._patches: dict = {"sent": 0, "answers": []}

        def is_patch(request) -> bool:
            return request.method == "PATCH" and "/sample/" in request.url

        def sent(request) -> None:
            if is_patch(request):
                self._patches["sent"] += 1

        def answered(response) -> None:
            if is_patch(response.request):
                self._patches["answers"].append((response.status, response.url))

        def failed(request) -> None:
            if is_patch(request):
                self._patches["answers"].append((0, f"{request.url}: {request.failure}"))

        self.page.on("request", sent)
        self.page.on("response", answered)
        self.page.on("requestfailed", failed)

    def patches_sent(self) -> int:
        self._track_patches()
        return self._patches["sent"]

    def wait_saved(self, since: int, at_least: int = 1, timeout: float = 30, quiet: float = 0.8) -> int:
        """Wait until at least ``at_least`` sample patches went out after ``since`` (a ``patches_sent()``), all were
        answered and none followed for ``quiet`` seconds; fail on an answer other than 2xx. Returns how many went
        out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent, answers = self._patches["sent"], self._patches["answers"]
            bad = [a for a in answers if not 200 <= a[0] < 300]
            if bad:
                raise UIError(f"the App's edit was refused: {bad}")
            if sent - since >= at_least and len(answers) == sent:
                self.page.wait_for_timeout(int(quiet * 1000))
                if self._patches["sent"] == sent:
                    return sent - since
            self.page.wait_for_timeout(200)
        raise UIError(
            f"{self._patches['sent'] - since} edit(s) saved of at least {at_least} expected within {timeout:.0f} s "
            f"({len(self._patches['answers'])}/{self._patches['sent']} answered)"
        )

    def annotate_sidebar(self):
        return self.by_cy("sidebar", self.by_cy("modal")).last

    def open_annotate(self, sample_index: int | None = None):
        """Switch the open sample modal (or open sample ``sample_index`` first) to its Annotate tab; returns the
        tab's sidebar. Without an active label schema it shows "Add schema" (see ``setup_annotation_schema``)."""
        self._track_patches()
        if sample_index is not None:
            self.open_sample(sample_index)
        modal = self.by_cy("modal")
        self.by_cy("annotate", modal).click()
        sidebar = self.annotate_sidebar()
        add_schema = sidebar.get_by_role("button", name="Add schema")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if add_schema.count() or self.by_cy("detection-mode", sidebar).count():
                break
            self.page.wait_for_timeout(300)
        else:
            raise UIError(f"the Annotate tab did not open:\n{self.text_of(sidebar)}")
        self.page.wait_for_timeout(500)
        self.shot("annotate_tab")
        return sidebar

    def setup_annotation_schema(self, field: str, classes=()) -> None:
        """Make ``field`` annotatable, as a user does: Add schema (or the schema manager's button) -> the field's
        Setup -> Scan (its classes and attributes from the data) -> "+ Add class" for each of ``classes`` missing ->
        Save (stores the label schema and activates it) -> close the schema manager."""
        sidebar = self.annotate_sidebar()
        add_schema = sidebar.get_by_role("button", name="Add schema")
        if add_schema.count():
            add_schema.click()
        else:
            self.by_cy("open-schema-manager", sidebar).click()
        manager = self.by_cy("schema-manager")
        manager.wait_for(state="visible", timeout=15_000)
        row = self.by_cy(f"field-row-{field}", manager)
        if not row.count():
            raise UIError(f"no field {field!r} in the schema manager:\n{self.text_of(manager)}")
        # The row's wrapper carries aria-disabled (rows are selectable only once set up), so Playwright deems the
        # Setup button disabled although a click opens the field's schema: force it.
        setup = self.by_cy("scan", row)
        (setup if setup.count() else self.by_cy("edit", row)).first.click(force=True)
        scan = self.page.get_by_role("button", name="Scan", exact=True)
        scan.wait_for(state="visible", timeout=15_000)
        scan.click(force=True)
        self.page.wait_for_timeout(1500)
        for name in classes:
            shown = self.text_of(manager)
            if re.search(rf"(?m)^{re.escape(name)}$", shown):
                continue
            self.page.get_by_role("button", name="+ Add class").click(force=True)
            self.page.wait_for_timeout(400)
            self.page.keyboard.type(name)
            self.page.keyboard.press("Enter")
            self.page.wait_for_timeout(500)
        self.shot(f"schema_{field}")
        self.page.get_by_role("button", name="Save", exact=True).click(force=True)
        self.page.wait_for_timeout(1500)
        self.by_cy("close-schema-manager").click(force=True)
        manager.wait_for(state="detached", timeout=15_000)
        self.by_cy("detection-mode", sidebar).wait_for(state="attached", timeout=15_000)
        self.page.wait_for_timeout(500)
        self.shot("annotate_ready")

    def annotate_labels(self) -> list[tuple[str, str]]:
        """(label id, class) of each label the Annotate tab lists (its list view)."""
        entries = self.page.locator('[data-cy^="annotate-label-"]')
        return [
            (e.get_attribute("data-cy").removeprefix("annotate-label-"), e.inner_text().strip()) for e in entries.all()
        ]

    def editing_label_id(self) -> str | None:
        """The id of the label open in the Annotate tab's editor ("Edit Detection"), or None."""
        if not self.by_cy("annotate-edit-back").count():
            return None
        found = re.search(r"id:\s*([0-9a-f]{24})", self.text_of(self.annotate_sidebar()))
        return found.group(1) if found else None

    def leave_label(self) -> None:
        """Back from the label editor to the Annotate tab's list of labels."""
        back = self.by_cy("annotate-edit-back")
        if back.count():
            back.click()
            back.wait_for(state="detached", timeout=10_000)
            self.page.wait_for_timeout(400)

    def select_label_in_annotate(self, label_id: str) -> None:
        """Open label ``label_id`` in the editor by clicking its entry in the list (a label with a mask opens in
        the mask tools: Select, Brush, Pen, AI, Merge)."""
        self.leave_label()
        entry = self.by_cy(f"annotate-label-{label_id}")
        if not entry.count():
            raise UIError(f"label {label_id} is not listed in the Annotate tab: {self.annotate_labels()}")
        entry.click()
        deadline = time.monotonic() + 10
        while self.editing_label_id() != label_id:
            if time.monotonic() > deadline:
                raise UIError(f"the editor did not open label {label_id} (shows {self.editing_label_id()})")
            self.page.wait_for_timeout(200)
        self.page.wait_for_timeout(500)
        self.shot(f"selected_{label_id[-6:]}")

    def _image_frame(self) -> tuple[float, float, float]:
        """(left, top, scale) of the sample's image in the modal now (zoom, pan): page coordinates of pixel (x, y)
        are (left + x * scale, top + y * scale)."""
        image = self.by_cy("lighter-sample-image", self.by_cy("modal"))
        box = image.bounding_box()
        return box["x"], box["y"], box["width"] / image.evaluate("i => i.naturalWidth")

    def image_point(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of pixel (x, y) of the sample's image as the modal shows it now."""
        left, top, scale = self._image_frame()
        return left + x * scale, top + y * scale

    def display_scale(self) -> float:
        """Screen pixels per image pixel in the modal now: the resolution at which the App stores painted masks."""
        return self._image_frame()[2]

    def _gesture(self, points, step_ms: int = 25) -> None:
        """Press at the first image point, move through the others, release. The page points are checked first (one
        call: the page is slow to answer while it draws): a point under the floating tool bar or off the canvas
        would click something else."""
        left, top, scale = self._image_frame()
        page_points = [(left + x * scale, top + y * scale) for x, y in points]
        on_canvas = self.page.evaluate(
            "points => points.map(([x, y]) => { const e = document.elementFromPoint(x, y);"
            " return !!e && e.getAttribute('data-cy') === 'lighter-sample-renderer-canvas'; })",
            page_points,
        )
        hidden = [p for p, ok in zip(points, on_canvas, strict=True) if not ok]
        if hidden:
            raise UIError(f"image points {hidden} are not on the visible canvas (tool bar over them, or off screen)")
        self.page.mouse.move(*page_points[0])
        self.page.mouse.down()
        for point in page_points[1:]:
            self.page.mouse.move(*point)
            self.page.wait_for_timeout(step_ms)
        self.page.mouse.up()

    def _mask_tool(self, name: str) -> None:
        """Pick a button of the mask tool bar (``brush``, ``pen``, ``select``, ``add``, ``remove`` ...)."""
        button = self.by_cy(name, self.by_cy("modal"))
        if not button.count():
            raise UIError(f"no {name!r} in the mask tool bar (is a label with a mask open?)")
        if button.first.get_attribute("aria-pressed") != "true":
            button.first.click()
            self.page.wait_for_timeout(300)

    def paint_mask(self, strokes, erase: bool = False, name: str = "painted") -> int:
        """Paint (or, with ``erase``, rub out) brush strokes on the mask of the label open in the editor: each
        stroke a list of (x, y) image pixels. The App saves each stroke at once (the mask, and the box re-fitted to
        the mask's extent); returns how many saves went out."""
        self._mask_tool("brush")
        self._mask_tool("remove" if erase else "add")
        since = self.patches_sent()
        for stroke in strokes:
            self._gesture(stroke)
            self.page.wait_for_timeout(150)
        count = self.wait_saved(since, at_least=1)
        self._mask_tool("select")
        self.shot(name)
        return count

    def delete_selected_label(self) -> None:
        """Delete the label open in the editor (its menu -> Delete label); saved at once."""
        label_id = self.editing_label_id()
        if label_id is None:
            raise UIError("no label is open in the editor")
        since = self.patches_sent()
        self.by_cy("label-menu-trigger").click()
        self.by_cy("label-menu-delete").click()
        self.wait_saved(since, at_least=1)
        deadline = time.monotonic() + 10
        while self.by_cy(f"annotate-label-{label_id}").count() or self.editing_label_id() == label_id:
            if time.monotonic() > deadline:
                raise UIError(f"label {label_id} is still listed after Delete label")
            self.page.wait_for_timeout(200)
        self.shot(f"deleted_{label_id[-6:]}")

    def set_label_class(self, name: str) -> None:
        """Pick class ``name`` for the label open in the editor (the schema's radio list of classes; a schema with
        more than 5 classes shows a dropdown instead, not handled here)."""
        group = self.by_cy("root_label_container", self.annotate_sidebar())
        options = group.evaluate(
            "g => Array.from(g.querySelectorAll('[role=radio]')).map(r => {"
            " const l = document.getElementById(r.getAttribute('aria-labelledby'));"
            " return [l ? l.innerText.trim() : '', r.getAttribute('aria-checked') === 'true']; })"
        )
        names = [n for n, _ in options]
        if name not in names:
            raise UIError(f"no class {name!r} among the radio choices {names} (is it in the label schema?)")
        if dict(options)[name]:
            return
        since = self.patches_sent()
        group.get_by_role("radio").nth(names.index(name)).click()
        self.wait_saved(since, at_least=1)

    def draw_box(self, label: str, x0: float, y0: float, x1: float, y1: float) -> str:
        """Create > Detection, drag a box from image pixel (x0, y0) to (x1, y1), pick class ``label``; returns the
        new label's id. The drag must start off every existing label (else it selects that one)."""
        self.leave_label()
        mode = self.by_cy("detection-mode", self.annotate_sidebar())
        if mode.get_attribute("data-cy-active") != "true":
            mode.click()
            self.page.wait_for_timeout(500)
        since = self.patches_sent()
        steps = 10
        self._gesture([(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(steps + 1)])
        self.wait_saved(since, at_least=1)
        deadline = time.monotonic() + 10
        while self.editing_label_id() is None:
            if time.monotonic() > deadline:
                raise UIError(f"no new label opened after the box was drawn:\n{self.text_of(self.annotate_sidebar())}")
            self.page.wait_for_timeout(200)
        label_id = self.editing_label_id()
        self.set_label_class(label)
        self.shot(f"drawn_{label}")
        return label_id

    def add_mask_to_selected(self) -> None:
        """Label menu -> "Add mask" for the label open in the editor (a box without a mask): opens the mask tool
        bar; painting then gives the label a mask (and fits its box to the mask)."""
        self.by_cy("label-menu-trigger").click()
        item = self.by_cy("label-menu-add-mask")
        if not item.count():
            raise UIError("the label menu offers no 'Add mask' (the label has one already?)")
        item.click()
        self.by_cy("brush", self.by_cy("modal")).wait_for(state="visible", timeout=10_000)
        self.page.wait_for_timeout(300)

    def close_annotate(self) -> None:
        """Leave the label editor, go back to the Explore tab, close the sample modal."""
        self.leave_label()
        modal = self.by_cy("modal")
        if modal.count():
            self.by_cy("explore", modal).click()
            self.by_cy("modal-looker-container", modal).wait_for(state="visible", timeout=30_000)
            self.page.wait_for_timeout(500)
        self.close_sample()

    def paint_new_mask(self, label: str, strokes) -> str:
        """Create > Segmentation Mask ("Paint to create a mask"), Brush, paint ``strokes`` (lists of image pixels)
        off every existing label: the first stroke creates a Detection with that mask; pick class ``label``.
        Returns the new label's id."""
        self.leave_label()
        mode = self.by_cy("segmentation-mode", self.annotate_sidebar())
        if mode.get_attribute("data-cy-active") != "true":
            mode.click()
            self.page.wait_for_timeout(500)
        self.paint_mask(strokes, name=f"painted_new_{label}")
        label_id = self.editing_label_id()
        if label_id is None:
            raise UIError("painting in segmentation mode opened no new label")
        self.set_label_class(label)
        self.shot(f"painted_new_{label}_class")
        return label_id

    # ---- the Embeddings panel (FiftyOne >= 1.22's EmbeddingsV2: a WebGL plot, a lasso in "Select" mode)
    def embeddings_plot(self, brain_key: str):
        """Open ``brain_key``'s plot in the Embeddings panel (already open); returns the panel."""
        panel = self.by_cy("panel-content-Embeddings")
        panel.get_by_text(brain_key, exact=True).first.click()
        panel.locator("canvas").first.wait_for(state="visible", timeout=30_000)
        self.page.wait_for_timeout(2500)  # the points are loaded, then drawn
        return panel

    def colour_plot_by(self, panel, path: str) -> None:
        panel.get_by_label("Color by").click()
        self.page.get_by_text(path, exact=True).first.click()
        self.page.wait_for_timeout(2000)

    def plotted_points(self, panel) -> np.ndarray:
        """Page (x, y) of the plotted points, as blobs of coloured pixels on the plot's canvas (its hints are grey
        text; call it while the plot is not coloured by a field, which adds a legend with coloured swatches):
        float (B, 2); points drawn over each other are one blob."""
        from scipy import ndimage

        canvas = panel.locator("canvas").first
        box = canvas.bounding_box()
        img = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        colourful = (img.max(axis=2) - img.min(axis=2)) > 40
        blobs, count = ndimage.label(colourful)
        centres = np.array(ndimage.center_of_mass(colourful, blobs, range(1, count + 1))).reshape(-1, 2)
        factor = np.array([box["width"] / img.shape[1], box["height"] / img.shape[0]])
        return centres[:, ::-1] * factor + np.array([box["x"], box["y"]])

    def lasso(self, panel, polygon) -> None:
        """Draw a lasso through the page points ``polygon`` in the plot's "Select" mode."""
        panel.get_by_text("Select", exact=True).first.click()
        self.page.wait_for_timeout(300)
        first, *rest = polygon
        self.page.mouse.move(*first)
        self.page.mouse.down()
        for point in [*rest, first]:
            self.page.mouse.move(*point, steps=8)
        self.page.mouse.up()
        self.page.wait_for_timeout(2000)

    def move_legend(self, panel) -> None:
        """Drag the plot's colour legend (top right, over the points) to the plot's bottom left corner."""
        grip = panel.get_by_role("button", name="Drag to reposition").first
        if not grip.count():
            return
        start, canvas = grip.bounding_box(), panel.locator("canvas").first.bounding_box()
        self.page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
        self.page.mouse.down()
        self.page.mouse.move(canvas["x"] + 20, canvas["y"] + canvas["height"] - 150, steps=10)
        self.page.mouse.up()
        self.page.wait_for_timeout(500)
