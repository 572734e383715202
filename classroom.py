"""The app's "Compare & learn" tab: the three processes side by side, the guidance and steps sweeps, and the
probability path, each a button over a geodemo.explore function and a named API endpoint (/compare_processes,
/guidance_sweep, /steps_sweep, /probability_path) that streams its partial results.

UI wiring and drawing only: the computations are geodemo.explore's, the figures geodemo.plotting.classroom's.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterator

import gradio as gr

from geodemo.explore import (GUIDANCE_SWEEP, STEPS_SWEEP, Comparison, Embeddings, GuidanceSweep, ProbabilityPath,
                             StepsSweep, View, compare_processes_stages, guidance_sweep_stages,
                             probability_path_stages, steps_sweep_stages)
from geodemo.images import ImageError, LoadedImage, load_image
from geodemo.plotting import render_png
from geodemo.plotting.classroom import (comparison_globes, guidance_curves, guidance_maps, model_label, path_globe,
                                        path_maps, steps_curves)
from geodemo.service import LIMITS, Catalogue, ModelCache, ModelUnavailable, image_truth

log = logging.getLogger("geodemo.classroom")
GlobeView = Callable[[str], gr.HTML]
"""Makes the app's globe component (a gr.HTML drawing a plotly figure's JSON) with the given elem_id."""
PROCESS_MODELS = ("default", "earth-flow", "earth-diffusion")
MAX_LIST = 12

INTRO = """## Compare & learn
Four experiments on one image: the three generative processes side by side, what classifier-free guidance does,
how many sampler steps are enough (the paper's "80 timesteps"), and the probability path from noise to a density
over the Earth. Pick an example view (its true centre is known) or upload your own image, then press a button."""
COMPARE_WORDS = """**What you see:** the same image and the same random seed under three generative processes.
The two R³ processes start from Gaussian noise in space and fly onto the globe; the Riemannian flow starts
uniform on the sphere and slides along its surface. Press ▶ Play (or drag the slider): all three move in
lockstep, one sampler step at a time; below, how close each one's best guess is and how spread out its samples are."""
GUIDANCE_WORDS = """**What you see:** the same start points sampled with more and more classifier-free guidance w.
Guidance pushes the samples towards what the image says and away from what any image would say: the spread
shrinks (less diversity) and the samples move towards the truth (more precision), until they may collapse
onto a single point: notice where each process's spread drops to almost nothing."""
STEPS_WORDS = """**What you see:** the error to the true location when the sampler takes 1, 2, 4, … steps from noise
to data, on the shipped example views (and on your image when its location is known), one curve per process.
With one step the sampler jumps straight from noise to a rough guess; notice how many steps it takes before
the curve flattens: more steps after that only cost time (the paper samples with a few dozen to 250)."""
PATH_WORDS = """**What you see:** the density p_t(x | image) that the model moves from noise (t = 1, uniform on the
globe) to data (t = 0, the answer), at five times, with the particles of the sampler at the same times and, for
the Riemannian flow, the arrows of the vector field that carries them. Press ▶ Play: the colour concentrates
where the particles go, and the particles are samples of the density shown under them."""


def parse_numbers(text: str, name: str, integer: bool, limits: tuple[float, float]) -> list:
    """Sorted distinct numbers from a comma- or space-separated list; ValueError (one sentence) otherwise."""
    parts = [p for p in re.split(r"[,;\s]+", str(text or "").strip()) if p]
    if not parts:
        raise ValueError(f"Give the {name} as a list of numbers, e.g. {'1, 4, 16' if integer else '0, 1, 2'}.")
    if len(parts) > MAX_LIST:
        raise ValueError(f"Give at most {MAX_LIST} {name}, got {len(parts)}.")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part[:20]!r} in the {name} is not a number.") from None
        if not limits[0] <= value <= limits[1] or (integer and value != int(value)):
            kind = "whole numbers" if integer else "numbers"
            raise ValueError(f"The {name} must be {kind} between {limits[0]:g} and {limits[1]:g}, got {part[:20]!r}.")
        values.append(int(value) if integer else value)
    return sorted(set(values))


def _image(path) -> LoadedImage:
    if not path:
        raise ValueError("Please add an image first (pick an example view or upload one).")
    return load_image(path)


def _truth_line(truth, source: str) -> str:
    if truth is None:
        return "True location: unknown for this image (errors need an example view or a photo with GPS)."
    return f"True location ({source}): {truth[0]:.2f}°, {truth[1]:.2f}°."


def _km(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} km" if value >= 1 else "< 1 km"


def comparison_table(comparison: Comparison) -> str:
    rows = ["| model | best guess | error to the truth | spread | localizability | time |", "|---|---|---|---|---|---|"]
    for run in comparison.runs:
        s = run.summary
        seconds = run.sampling_seconds + (run.scoring_seconds or 0)
        rows.append(f"| {model_label(run.model, run.process)} | {s.best_guess[0]:.1f}°, {s.best_guess[1]:.1f}° "
                    f"({s.best_guess_rule}) | {_km(s.error_km)} | {_km(run.spread_km)} | "
                    f"{'computing…' if s.localizability is None else f'{s.localizability:.2f} nats/sr'} | "
                    f"{seconds:.1f} s |")
    return "\n".join(rows) + ("\n\nSpread: median distance of the samples to their mean. Localizability: mean "
                              "log-density of the scored samples (higher = more certain).")


def guidance_table(sweep: GuidanceSweep) -> str:
    rows = ["| model | " + " | ".join(f"w = {w:g}" for w in sweep.guidance) + " |",
            "|---|" + "---|" * len(sweep.guidance)]
    for model, runs in sweep.runs.items():
        cells = [f"{_km(r.spread_km)} / {_km(r.error_km)}" for r in runs] + ["…"] * (len(sweep.guidance) - len(runs))
        rows.append(f"| {model_label(model, sweep.processes[model])} | " + " | ".join(cells) + " |")
    return "Spread / median error to the truth:\n\n" + "\n".join(rows)


def steps_table(sweep: StepsSweep) -> str:
    rows = ["| model | " + " | ".join(str(s) for s in sweep.steps) + " |", "|---|" + "---|" * len(sweep.steps)]
    for model in sweep.processes:
        done = [f"{_km(km)} / {score:,.0f}" for km, score in zip(sweep.median_km[model], sweep.geoscore[model])]
        rows.append(f"| {model_label(model, sweep.processes[model])} | "
                    + " | ".join(done + ["…"] * (len(sweep.steps) - len(done))) + " |")
    return (f"Median error / mean GeoScore by sampler steps, on: {', '.join(sweep.views)}.\n\n" + "\n".join(rows))


def path_table(path: ProbabilityPath) -> str:
    rows = ["| t | γ(t) | ∫ p_t dΩ | how log p_t is computed | time |", "|---|---|---|---|---|"]
    for p in path.times:
        mass = "…" if p.cells is None else f"{p.cells.total_mass():.3f}"
        seconds = "…" if p.seconds is None else f"{p.seconds:.1f} s"
        rows.append(f"| {p.t:.3f} | {p.gamma:.3f} | {mass} | {p.how} | {seconds} |")
    arrows = ("Arrows: the Riemannian flow's tangent field at t, the direction the particles move in (longest "
              "arrow scaled to 8°)." if path.times[0].field_xyz is not None else
              "No arrows: the R³ processes' field lives in space, not on the sphere.")
    return f"**Exact or estimate?** {path.exact}\n\n{arrows}\n\n" + "\n".join(rows)


def chosen_pipes(models: ModelCache, *chosen: str) -> dict:
    """The distinct chosen models (empty choices left out), loaded; ModelUnavailable for an unknown name."""
    wanted = list(dict.fromkeys(c for c in chosen if c))
    if not wanted:
        raise ValueError("Choose at least one model.")
    return {name: models.get(name) for name in wanted}


def compare_updates(models: ModelCache, image, model_a, model_b, model_c, num_samples, steps, guidance,
                    seed) -> Iterator[tuple]:
    """/compare_processes: one image under three models from one seed; streams the globes, then the scores."""
    loaded = _image(image)
    truth, source = image_truth(loaded)
    sampled, globes = 0, None
    for stage in compare_processes_stages(chosen_pipes(models, model_a, model_b, model_c), loaded.image,
                                          num_samples=num_samples, steps=steps, guidance=guidance, seed=seed,
                                          truth=truth):
        if len(stage.runs) > sampled or stage.complete:  # a new globe, or the scored best guesses
            globes = comparison_globes(stage).to_json()
        sampled = len(stage.runs)
        # the unchanged globe is sent again, not skipped: Gradio keeps a new component per skip in the session
        yield globes, _truth_line(truth, source) + "\n\n" + comparison_table(stage), stage.to_dict()


def guidance_updates(models: ModelCache, image, model_a, model_b, model_c, guidance_list, num_samples, steps,
                     seed) -> Iterator[tuple]:
    """/guidance_sweep: one image at each guidance scale under each model; streams the curves as they fill in."""
    loaded = _image(image)
    truth, source = image_truth(loaded)
    scales = parse_numbers(guidance_list, "guidance scales", False, LIMITS["guidance"])
    for stage in guidance_sweep_stages(chosen_pipes(models, model_a, model_b, model_c), Embeddings(loaded.image),
                                       scales, num_samples=num_samples, steps=steps, seed=seed, truth=truth):
        if len({len(runs) for runs in stage.runs.values()}) == 1:  # drawn when every model has the latest w
            yield (render_png(guidance_curves(stage)), render_png(guidance_maps(stage)),
                   _truth_line(truth, source) + "\n\n" + guidance_table(stage), stage.to_dict())


def steps_updates(models: ModelCache, image, model_a, model_b, model_c, steps_list, samples_per_view, guidance,
                  seed) -> Iterator[tuple]:
    """/steps_sweep: error to the truth against sampler steps on the example views, and on the image when its
    location is known from its GPS (an example view is among the views already)."""
    counts = parse_numbers(steps_list, "step counts", True, LIMITS["steps"])
    extra = []
    if image:
        loaded = load_image(image)
        if loaded.gps is not None:
            extra.append(View("your image", loaded.image, loaded.gps))
    for stage in steps_sweep_stages(chosen_pipes(models, model_a, model_b, model_c), steps=counts,
                                    samples_per_view=samples_per_view, guidance=guidance, seed=seed,
                                    extra_views=extra):
        if len({len(values) for values in stage.median_km.values()}) == 1:  # every model has the latest count
            yield render_png(steps_curves(stage)), steps_table(stage), stage.to_dict()


def path_updates(models: ModelCache, image, model, num_samples, guidance, seed,
                 map_options: dict | None = None) -> Iterator[tuple]:
    """/probability_path: p_t(x | image) at five times from noise to data, the particles and the flow's field."""
    loaded = _image(image)
    truth, _ = image_truth(loaded)
    for stage in probability_path_stages(chosen_pipes(models, model)[model], loaded.image, num_samples=num_samples,
                                         guidance=guidance, seed=seed, truth=truth, map_options=map_options,
                                         name=model):
        yield path_globe(stage).to_json(), render_png(path_maps(stage)), path_table(stage), stage.to_dict()


def build_classroom_tab(models: ModelCache, catalogue: Catalogue, globe: GlobeView,
                        examples: tuple[list[str], list[str]] = ([], []), map_options: dict | None = None) -> None:
    """The tab's components and its four events; call inside a `gr.Tab` of the app's Blocks.

    map_options: the probability path's adaptive maps (geodemo.service.MAP_OPTIONS: coarse_deg, levels, ...)."""
    names = catalogue.names
    defaults = ([m for m in PROCESS_MODELS if m in names] + names + [None] * 3)[:3]

    def event(updates, **options):
        """An event over one of the *_updates generators; bad input or a failed model becomes one sentence."""
        def run(*args) -> Iterator:
            try:
                yield from updates(models, *args, **options)
            except (ImageError, ModelUnavailable, ValueError) as err:
                raise gr.Error(str(err)) from None
            except (RuntimeError, MemoryError) as err:
                log.exception("classroom computation failed")
                raise gr.Error(f"The computation failed ({type(err).__name__}); try fewer samples or steps.") from None
        return run

    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=220,
                             elem_id="classroom-image")
            if examples[0]:
                gr.Examples(examples=examples[0], inputs=[image], example_labels=examples[1], examples_per_page=10,
                            label="Example views (true centre known)")
        with gr.Column(scale=1, min_width=300):
            chosen = [gr.Dropdown(choices=names, value=defaults[i], label=f"Model {i + 1}", allow_custom_value=True)
                      for i in range(3)]
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=LIMITS["seed"][1], label="Seed (same for all)")

    with gr.Accordion("1 · Three processes side by side", open=True, elem_id="panel-compare"):
        gr.Markdown(COMPARE_WORDS)
        with gr.Row():
            compare_samples = gr.Slider(16, 512, value=64, step=16, label="Samples per process",
                                        elem_id="compare-samples")
            compare_steps = gr.Slider(*LIMITS["steps"], value=32, step=1, label="Sampler steps")
            compare_guidance = gr.Slider(*LIMITS["guidance"], value=0.0, step=0.1, label="Guidance scale w")
            compare_button = gr.Button("Compare the processes", variant="primary")
        compare_globe = globe("compare-globes")
        compare_summary = gr.Markdown(elem_id="compare-summary")
        with gr.Accordion("Data (JSON)", open=False):
            compare_data = gr.JSON()

    with gr.Accordion("2 · Guidance sweep", open=True, elem_id="panel-guidance"):
        gr.Markdown(GUIDANCE_WORDS)
        with gr.Row():
            guidance_list = gr.Textbox(", ".join(f"{w:g}" for w in GUIDANCE_SWEEP), label="Guidance scales w",
                                       elem_id="guidance-list")
            guidance_samples = gr.Slider(16, 512, value=128, step=16, label="Samples", elem_id="guidance-samples")
            guidance_steps = gr.Slider(*LIMITS["steps"], value=32, step=1, label="Sampler steps")
            guidance_button = gr.Button("Sweep the guidance", variant="primary")
        guidance_plot = gr.Image(label="Spread and error against w", show_label=False, type="pil", interactive=False,
                                 elem_id="guidance-curves", format="png")
        guidance_samples_plot = gr.Image(label="The samples at each w", show_label=False, type="pil", interactive=False,
                                         elem_id="guidance-maps", format="png")
        guidance_summary = gr.Markdown(elem_id="guidance-summary")
        with gr.Accordion("Data (JSON)", open=False):
            guidance_data = gr.JSON()

    with gr.Accordion("3 · Timestep sweep (the paper's \"80 timesteps\")", open=True, elem_id="panel-steps"):
        gr.Markdown(STEPS_WORDS)
        with gr.Row():
            steps_list = gr.Textbox(", ".join(str(s) for s in STEPS_SWEEP), label="Sampler steps", elem_id="steps-list")
            steps_samples = gr.Slider(1, 32, value=4, step=1, label="Samples per view")
            steps_guidance = gr.Slider(*LIMITS["guidance"], value=0.0, step=0.1, label="Guidance scale w")
            steps_button = gr.Button("Sweep the steps", variant="primary")
        steps_plot = gr.Image(label="Error and GeoScore against sampler steps", show_label=False, type="pil", interactive=False,
                              elem_id="steps-curves", format="png")
        steps_summary = gr.Markdown(elem_id="steps-summary")
        with gr.Accordion("Data (JSON)", open=False):
            steps_data = gr.JSON()

    with gr.Accordion("4 · The probability path", open=True, elem_id="panel-path"):
        gr.Markdown(PATH_WORDS)
        with gr.Row():
            path_model = gr.Dropdown(choices=names, value=defaults[0], label="Model", allow_custom_value=True)
            path_samples = gr.Slider(16, 1024, value=256, step=16, label="Particles", elem_id="path-samples")
            path_guidance = gr.Slider(*LIMITS["guidance"], value=0.0, step=0.1, label="Guidance scale w")
            path_button = gr.Button("Show the path", variant="primary")
        path_view = globe("path-globe")
        path_plot = gr.Image(label="log p_t at each time", show_label=False, type="pil", interactive=False, elem_id="path-maps",
                             format="png")
        path_summary = gr.Markdown(elem_id="path-summary")
        with gr.Accordion("Data (JSON)", open=False):
            path_data = gr.JSON()

    compare_button.click(event(compare_updates),
                         [image, *chosen, compare_samples, compare_steps, compare_guidance, seed],
                         [compare_globe, compare_summary, compare_data], api_name="compare_processes")
    guidance_button.click(event(guidance_updates),
                          [image, *chosen, guidance_list, guidance_samples, guidance_steps, seed],
                          [guidance_plot, guidance_samples_plot, guidance_summary, guidance_data],
                          api_name="guidance_sweep")
    steps_button.click(event(steps_updates), [image, *chosen, steps_list, steps_samples, steps_guidance, seed],
                       [steps_plot, steps_summary, steps_data], api_name="steps_sweep")
    path_button.click(event(path_updates, map_options=map_options),
                      [image, path_model, path_samples, path_guidance, seed],
                      [path_view, path_plot, path_summary, path_data], api_name="probability_path")
