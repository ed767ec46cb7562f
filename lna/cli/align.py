"""`lna-align --model M --langs zh,de [--pivot en] -o DIR`: the study's MAPO alignment."""
import click

from lna.cli.options import DTYPES, POSITIVE, model_option, runner_options, sampling_options

STAGES = ("sample", "score", "pairs", "train")


@click.command("align")
@model_option(help="Model to align: Hugging Face id (local cache), local folder, lna:tiny-llama.")
@click.option("--langs", required=True, help="Languages to align, e.g. zh,de (the pivot is left out).")
@click.option("--pivot", default="en", show_default=True, help="Language whose responses are the references.")
@click.option("--dataset", default="mgsm", show_default=True,
              help="Questions: mgsm, msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL (questions pair across "
                   "languages by id).")
@click.option("-o", "--out", required=True, type=click.Path(), help="Output folder (a rerun resumes there).")
@click.option("--stop-after", type=click.Choice(STAGES), default="train", show_default=True,
              help="Last stage to run.")
@click.option("--responses", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Responses to use instead of sampling (any JSONL lna reads, with responses).")
@click.option("--scores", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A scores file to use instead of sampling and scoring.")
@click.option("--pairs", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A pairs file to train on (records: split, lang, prompt, chosen, rejected).")
@sampling_options(samples=20, temperature=0.8, top_p=1.0, max_new_tokens=512,
                  seed_help="Sampling, pair subset and training seed.")
@runner_options(backend="Sampling backend.", device="cpu, cuda or cuda:N, for every stage (default: cuda where "
                "torch sees a GPU, else cpu).", dtype="Sampling dtype (default: bfloat16 on cuda, float32 on cpu).",
                template="Prompt template in configs/models.yaml (default: by model).",
                token_budget="Tokens per batch when sampling and scoring.", checkpoints=False)
@click.option("--scorer", default="facebook/nllb-200-distilled-600M", show_default=True,
              help="Translation model (NLLB/M2M100): Hugging Face id (local cache) or folder.")
@click.option("--scorer-dtype", type=click.Choice([*DTYPES, "float64"]),
              default="float32", show_default=True, help="Dtype of the translation model that scores.")
@click.option("--score", type=click.Choice(["clean", "released"]), default="clean", show_default=True,
              help="Score that ranks the pairs: clean (mean over each reference's own tokens) or released "
                   "(the MAPO script's, divided by its batch's padded length).")
@click.option("--extraction", type=click.Choice(["lna", "mapo"]), default="lna", show_default=True,
              help="How a chosen response's answer is read, as lna-eval --extraction: lna, or the released "
                   "MAPO rules.")
@click.option("--max-pairs", type=POSITIVE, default=10000, show_default=True, help="Train pairs kept per language.")
@click.option("--dev-every", type=int, default=10, show_default=True,
              help="Every N-th question group goes to the dev split (0: none).")
@click.option("--beta", default=0.1, show_default=True, help="DPO beta: how far the policy may move from the base model.")
@click.option("--lr", default=1e-6, show_default=True, help="Peak learning rate.")
@click.option("--batch", default=16, show_default=True, help="Pairs per optimizer step.")
@click.option("--micro-batch", default=2, show_default=True, help="Pairs per forward pass (accumulated to --batch).")
@click.option("--steps", default=1000, show_default=True, help="Optimizer steps.")
@click.option("--save-every", default=100, show_default=True, help="Steps between merged checkpoints.")
@click.option("--lora-r", default=64, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", default=128, show_default=True, help="LoRA alpha (the update is scaled by alpha / r).")
@click.option("--lora-dropout", default=0.05, show_default=True, help="Dropout on the LoRA branch.")
@click.option("--lora-targets", default="q_proj,v_proj,o_proj", show_default=True,
              help="Modules that get LoRA (the released dpo_lora.py's).")
@click.option("--warmup-steps", default=100, show_default=True, help="Steps of learning-rate warm-up.")
@click.option("--scheduler", default="cosine", show_default=True, help="Learning-rate schedule (transformers' names).")
@click.option("--weight-decay", default=0.05, show_default=True, help="Weight decay of the optimizer.")
@click.option("--max-length", default=1024, show_default=True, help="Tokens of prompt + response kept per pair.")
@click.option("--eval-pairs", default=200, show_default=True, help="Dev pairs evaluated at each save (0: none).")
@click.option("--save-dtype", type=click.Choice(DTYPES), default=None,
              help="Dtype of the merged checkpoints (default: the training dtype, bfloat16 on cuda).")
def align(quiet, **kw):
    """Align a model with MAPO (DPO variant): sample responses in each language and the pivot,
    score each non-pivot response by how well NLLB force-decodes the pivot responses from it,
    build preference pairs (chosen: correct and higher-scored), and train DPO with LoRA.

    Writes DIR/responses.jsonl, scores.jsonl, pairs.jsonl, checkpoints/step-N/ (merged model
    folders: profile each with lna-profile, then `lna-compare BASE.zarr STEP.zarr... --series`),
    trainer/ (resume state) and train_log.jsonl. Training needs pip install 'lna[align]'.
    """
    from lna.align.pipeline import Options, run
    from lna.align.train import TrainSettings

    targets = [t.strip() for t in kw.pop("lora_targets").split(",") if t.strip()]
    if not targets:
        raise click.BadParameter("give at least one module name", param_hint="--lora-targets")
    names = ("beta", "lr", "batch", "micro_batch", "steps", "save_every", "lora_r", "lora_alpha", "lora_dropout",
             "warmup_steps", "scheduler", "weight_decay", "max_length", "eval_pairs")
    settings = TrainSettings(**{k: kw.pop(k) for k in names}, lora_targets=targets, seed=kw["seed"])
    run(Options(progress=not quiet, train=settings, **kw))
