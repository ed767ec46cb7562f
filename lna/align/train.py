"""Stage 4, train: DPO with LoRA through TRL and PEFT, saving merged checkpoints on the way.

Defaults are the study's (docs/method.md, "Alignment"): beta 0.1, lr 1e-6, batch 16, 1000 steps, LoRA r 64 /
alpha 128 / dropout 0.05. From the released script (NJUNLP/MAPO Alignment/dpo_lora.py,
trl 0.7.10 / peft 0.6.2): LoRA on q_proj, v_proj and o_proj; cosine schedule with 100 warmup
steps, weight decay 0.05, AdamW, gradient clipping at 1, gradient checkpointing, bf16,
sequences up to 1024 tokens, dropout disabled during DPO (TRL's default then and now, so
LoRA's dropout is configured but inactive, as there). Where lna differs: pairs longer than
1024 tokens are truncated by TRL (the script dropped pairs over 1024 *characters*); the
batch is the study's 16 (the released config on 8 processes gave 2 x 16 x 8); dev pairs are
evaluated at each save but nothing is chosen by them (all checkpoints are kept).

bf16 on a GPU, fp32 on CPU. Every `save_every` steps (and at the end) the trainer's own
checkpoint (adapter, optimizer, schedule; the latest only) goes to DIR/trainer/ - a rerun
resumes from it - and the merged model to DIR/checkpoints/step-N/.
"""
import hashlib
import json
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lna.core.errors import LnaError

NEEDS = "lna-align's train stage needs TRL and PEFT: pip install 'lna[align]'"


@dataclass
class TrainSettings:
    beta: float = 0.1
    lr: float = 1e-6
    batch: int = 16  # pairs per optimizer step
    micro_batch: int = 2  # pairs per forward (batch / micro_batch steps of gradient accumulation)
    steps: int = 1000
    save_every: int = 100
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["q_proj", "v_proj", "o_proj"])
    warmup_steps: int = 100
    scheduler: str = "cosine"
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    max_length: int = 1024
    eval_pairs: int = 200  # dev pairs evaluated at each save (0: none)
    logging_steps: int = 10
    seed: int = 0

    def check(self) -> None:
        for name in ("batch", "micro_batch", "steps", "save_every", "lora_r", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise LnaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch % self.micro_batch:
            raise LnaError(f"--batch {self.batch} is not a multiple of --micro-batch {self.micro_batch}")


def checkpoints(out) -> list[Path]:
    """Merged checkpoints in DIR/checkpoints, by step."""
    folder = Path(out) / "checkpoints"
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / "config.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _imports():
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        raise LnaError(NEEDS) from None


def train(model: str, pairs: list[dict], out, settings: TrainSettings, **kw) -> list[Path]:
    """DPO on the train pairs; returns the merged checkpoints (all steps saved so far).
    Keywords: device, save_dtype, progress, say; revision (a hub model's), info (the model
    already resolved: lna.models.loading.resolve)."""
    with warnings.catch_warnings():  # transformers' renames of TRL's own arguments: nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        return _train(model, pairs, out, settings, **kw)


def _train(model: str, pairs: list[dict], out, settings: TrainSettings, *, device: str | None = None,
           save_dtype: str | None = None, progress: bool = True, say=print, revision: str | None = None,
           info=None) -> list[Path]:
    settings.check()
    _imports()
    from lna.models import loading

    out = Path(out)
    device, dtype, save_dtype = _precision(device, save_dtype)
    train_rows, dev_rows = _split(pairs, settings)
    info = info or loading.resolve(model, revision)
    digest = hashlib.sha256(json.dumps(train_rows, ensure_ascii=False).encode()).hexdigest()[:16]
    record = {"model": model, "settings": asdict(settings), "save_dtype": save_dtype, "dtype": dtype,
              "pairs": len(train_rows), "pairs_digest": digest,
              **({"revision": revision} if revision else {})}  # absent without one: earlier records resume
    _check_same_run(out / "train.json", record)
    final = out / "checkpoints" / f"step-{settings.steps}"
    if final.is_dir():
        say(f"train: {final} exists; nothing to do")
        return checkpoints(out)

    tokenizer = loading.load_tokenizer(info)  # one line where the folder has none
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    provenance = {"base": model, "base_revision": info.revision, "method": "dpo+lora", "pairs_digest": digest,
                  "beta": settings.beta, "lr": settings.lr, "batch": settings.batch, "steps": settings.steps,
                  "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha, "targets": list(settings.lora_targets)}}
    callbacks = _callbacks(out, tokenizer, provenance, save_dtype, say)
    trainer = _trainer(info, tokenizer, train_rows, dev_rows, settings, out / "trainer", dtype, device, progress,
                       callbacks)
    resume = _last_state(out / "trainer")
    say(f"train: DPO+LoRA on {len(train_rows):,} pairs ({len(dev_rows):,} dev), {settings.steps} steps of "
        f"{settings.batch}, {dtype} on {device}" + (f", resuming from {resume.name}" if resume else ""))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return checkpoints(out)


def _precision(device: str | None, save_dtype: str | None) -> tuple:
    """(device, training dtype, dtype of the merged checkpoints): bf16 on a GPU, fp32 on CPU."""
    import torch

    from lna.align.lora_merge import DTYPES

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LnaError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    save_dtype = save_dtype or dtype
    if save_dtype not in DTYPES:
        raise LnaError(f"unknown --save-dtype {save_dtype!r}: use one of {', '.join(DTYPES)}")
    return device, dtype, save_dtype


def _split(pairs: list[dict], settings: TrainSettings) -> tuple:
    """(train rows, dev rows): the dev pairs shuffled by the seed and cut to eval_pairs."""
    train_rows = [_row(p) for p in pairs if p["split"] == "train"]
    if not train_rows:
        raise LnaError("no training pairs: no question had a correct response that outscored another "
                       "(sample more responses, or check the answers)")
    dev_rows = [_row(p) for p in pairs if p["split"] == "dev"]
    random.Random(settings.seed).shuffle(dev_rows)
    return train_rows, dev_rows[:settings.eval_pairs]


def _callbacks(out: Path, tokenizer, provenance: dict, save_dtype: str, say) -> list:
    """The trainer's callbacks: a merged checkpoint at every save, the log in train_log.jsonl."""
    from transformers import TrainerCallback

    from lna.align.lora_merge import save_merged

    class Checkpoints(TrainerCallback):
        """A merged model folder at every save (and at the start of a resumed run whose
        last save was not merged before it stopped)."""

        def _write(self, step, peft_model):
            stats = save_merged(peft_model, tokenizer, out / "checkpoints" / f"step-{step}", dtype=save_dtype,
                                provenance={**provenance, "step": step})
            share = stats["changed"] / max(stats["elements"], 1)
            say(f"train: step {step}: merged checkpoint {out / 'checkpoints' / f'step-{step}'} "
                f"({share:.1%} of the adapted weights' elements differ from the base in {save_dtype})")

        def on_train_begin(self, args, state, control, model=None, **kw):
            if state.global_step and not (out / "checkpoints" / f"step-{state.global_step}").is_dir():
                self._write(state.global_step, model)

        def on_save(self, args, state, control, model=None, **kw):
            self._write(state.global_step, model)

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            from lna.core import jsonl

            jsonl.append(out / "train_log.jsonl", [{"step": state.global_step, **(logs or {})}])

    return [Checkpoints(), Log()]


def _trainer(info, tokenizer, train_rows, dev_rows, settings: TrainSettings, state_dir: Path, dtype: str,
             device: str, progress: bool, callbacks: list):
    """TRL's DPOTrainer with PEFT's LoRA on the model, configured as the study's script."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, set_seed
    from trl import DPOConfig, DPOTrainer

    gpu = device.startswith("cuda")
    net = AutoModelForCausalLM.from_pretrained(info.path, dtype=getattr(torch, dtype))
    args = DPOConfig(
        output_dir=str(state_dir), beta=settings.beta, learning_rate=settings.lr, max_steps=settings.steps,
        per_device_train_batch_size=settings.micro_batch, per_device_eval_batch_size=settings.micro_batch,
        gradient_accumulation_steps=settings.batch // settings.micro_batch,
        lr_scheduler_type=settings.scheduler, warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, optim="adamw_torch", max_length=settings.max_length,
        save_strategy="steps", save_steps=settings.save_every, save_total_limit=1,
        eval_strategy="steps" if dev_rows else "no", eval_steps=settings.save_every,
        logging_steps=settings.logging_steps, report_to="none", disable_tqdm=not progress, seed=settings.seed,
        bf16=gpu, use_cpu=not gpu, gradient_checkpointing=gpu,  # CPU runs are small: speed over memory
    )
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=list(settings.lora_targets), bias="none", task_type="CAUSAL_LM")
    if not progress:  # nor the bars of TRL's dataset preparation
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    set_seed(settings.seed)  # LoRA's A is random: seeded, two runs (or a run and its resume) agree
    trainer = DPOTrainer(model=net, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
                         processing_class=tokenizer, peft_config=lora, callbacks=callbacks)
    if not progress:  # quiet: no per-log prints (the log still goes to train_log.jsonl)
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _row(p: dict) -> dict:
    return {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}


def _last_state(folder: Path) -> Path | None:
    """The newest complete trainer checkpoint (its trainer_state.json is written last)."""
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def _check_same_run(path: Path, record: dict) -> None:
    """A rerun resumes only the same training; other settings need another folder."""
    from lna.core.atomic import atomic_file

    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != json.loads(json.dumps(record)):
            raise LnaError(f"{path.parent} holds training with other settings or pairs ({path.name}); "
                           "use another -o, or delete its trainer/, checkpoints/ and train.json")
        return
    with atomic_file(path, "json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
