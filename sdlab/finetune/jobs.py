"""Fine-tuning in the background: a job with a status (queued → running → done or failed) that
the app and notebooks can watch; fine-tunes in one process take turns."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import SdlabInputError, writable_folder
from ..feedback import now
from ..presets import check_version_name
from .examples import Example, training_examples
from .training import FinetuneConfig, base_model, finetune
from .versions import ModelVersion, prune_versions

STATES = ("queued", "running", "done", "failed")  # what FinetuneStatus.state can be


@dataclass
class FinetuneStatus:
    """Where a fine-tune job is: queued → running (step, loss) → done (version) or failed (message)."""

    job_id: str
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    message: str = "waiting for the previous fine-tune to finish"
    version: str | None = None  # the new version's folder, when done
    model: str | None = None  # its label, e.g. "sdlab-tiny-feedback-v2"
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return f"[{self.job_id}] {self.state}: step {self.step}/{self.total_steps}{loss} · {self.message}"


FINETUNE_TURN = threading.Lock()  # fine-tunes in one process take turns: later jobs wait "queued"


class FinetuneJob:
    """`finetune()` in a background thread. `status()` any time; `wait()` for the ModelVersion."""

    def __init__(self, pipe, examples: list[Example], config: FinetuneConfig, models_dir, name: str | None = None,
                 max_seconds: float | None = None, keep_versions: int | None = None):
        self.id = uuid.uuid4().hex[:8]
        self.max_seconds, self.keep_versions = max_seconds, keep_versions
        self._stop_reason = "the fine-tune was cancelled"
        self.version: ModelVersion | None = None
        self.error: BaseException | None = None
        self._args = (pipe, examples, config, models_dir, name)
        self._status = FinetuneStatus(self.id, total_steps=config.steps)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sdlab-finetune-{self.id}", daemon=True)

    def start(self) -> "FinetuneJob":
        self._thread.start()
        return self

    def status(self) -> FinetuneStatus:
        with self._lock:
            return replace(self._status)

    def _update(self, **values) -> None:
        with self._lock:
            self._status = replace(self._status, **values)

    @property
    def running(self) -> bool:
        """True while the job is queued or training."""
        return self._thread.is_alive()

    def cancel(self, reason: str = "the fine-tune was cancelled") -> None:
        """Stop at the next step (the job ends "failed", with the reason)."""
        if not self._cancel.is_set():
            self._stop_reason = reason
        self._cancel.set()

    def _should_stop(self, began: float) -> bool:
        if self.max_seconds is not None and time.perf_counter() - began > self.max_seconds:
            self.cancel(f"stopped at the time limit of {self.max_seconds / 60:g} minutes; ask for fewer steps")
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> ModelVersion:
        """Block until the job ends; the new version, or the job's error raised here."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the fine-tune is still running after {timeout} s: {self.status().line()}")
        if self.error is not None:
            raise self.error
        return self.version

    def _run(self) -> None:
        pipe, examples, config, models_dir, name = self._args
        with FINETUNE_TURN:
            began = time.perf_counter()
            self._update(state="running", started_at=now(), message=f"training on {len(examples)} images")
            try:
                self.version = finetune(pipe, examples, config, models_dir=models_dir, name=name,
                                        on_step=lambda step, loss: self._update(step=step, loss=loss),
                                        should_stop=lambda: self._should_stop(began))
                if self.keep_versions is not None:
                    prune_versions(self.version.folder.parent.parent, self.version.name, self.keep_versions)
                end = dict(state="done", version=str(self.version.folder), model=self.version.label,
                           message=f"saved {self.version.label}")
            except Exception as err:  # the reason goes into the status; wait() re-raises it
                self.error = err
                reason = self._stop_reason if isinstance(err, InterruptedError) else str(err) \
                    if isinstance(err, SdlabInputError) else f"{type(err).__name__}: {err}"
                end = dict(state="failed", message=reason)
            self._update(**end, finished_at=now(), seconds=round(time.perf_counter() - began, 2))


def start_finetune(pipe, source, config: FinetuneConfig | None = None, *, models_dir: str | Path,
                   name: str | None = None, max_seconds: float | None = None,
                   keep_versions: int | None = None) -> FinetuneJob:
    """Start `finetune()` in the background and return the job at once.

    The images are read and everything is checked now, so zero liked images, a name that cannot be a
    version's, or a models_dir that cannot be written, is a SdlabInputError here, not a failed job.
    """
    config = (config or FinetuneConfig()).checked()
    examples = training_examples(source, config.min_rating)
    if name is not None:
        check_version_name(name)
    base_model(pipe, config)
    return FinetuneJob(pipe, examples, config, writable_folder(models_dir, "models_dir"), name, max_seconds,
                       keep_versions).start()
