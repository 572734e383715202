"""geodemo's Gradio app: drop an image, watch the samples land on a 3D globe, then read the log-density map.

Thin UI wiring and drawing decisions only: a request is geodemo.service.locate, which yields its stages.
Run: python app.py [--model NAME_OR_FOLDER] [--port N] [--share] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import plotly
import torch

from classroom import build_classroom_tab
from geodemo.examples import example_views
from geodemo.guidance_spread import guidance_hint
from geodemo.images import ImageError, load_image
from geodemo.memory import release_freed_memory
from geodemo.plotting import density_map_figure, globe_figure, render_png
from geodemo.request_files import RequestFiles, TempBounds, use_own_temp_dir
from geodemo.service import (DEFAULTS, LIMITS, POINT_GUIDANCE, Catalogue, ModelCache, ModelUnavailable, Request,
                             Stage, check_request, locate, make_catalogue, measured_latency, state_labels)
from geodemo.encoders.sources import ENCODER_DIR_ENV, set_encoder_dir
from geodemo.hub import LocalCopyUse, set_local_copy_use
from geodemo.space import SPACE_MODEL, on_space, request_duration, start_app
from geodemo.summary import Summary, export_rows, to_csv, to_geojson

try:  # ZeroGPU Spaces: the request runs on a GPU lent per call (a no-op elsewhere)
    import spaces
except ImportError:
    spaces = None


def on_gpu(fn):
    """fn on a GPU lent per call on ZeroGPU Spaces, for as long as its request needs (geodemo.space.gpu_seconds);
    fn itself without the `spaces` package. Under ZeroGPU fn runs in a worker process: what it yields is pickled."""
    return spaces.GPU(duration=request_duration(fn))(fn) if spaces is not None else fn

log = logging.getLogger("geodemo.app")
LOCAL_COPIES = LocalCopyUse(model="python app.py --model {model}",
                            encoders="python app.py --encoder-dir {encoders} (and your --model)",
                            both="python app.py --model {model} --encoder-dir {encoders}")
"""How the hub's messages tell an app user to pass local copies of a model and its encoder."""
MAX_UPLOAD_MB = 20.0
"""Largest upload the server accepts (a phone photo is 2-12 MB; geodemo.images bounds the pixels as well)."""
QUEUE_SIZE = 32
"""Requests waiting at most (two run at a time); one more is told that the queue is full and to try again."""
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
GLOBE_HEIGHT = 560
GLOBE_TEMPLATE = f'<div class="geodemo-globe" style="width:100%;height:{GLOBE_HEIGHT}px"></div>'
GLOBE_JS = """
function draw() {
  const target = element.querySelector('.geodemo-globe');
  if (!target || !props.value) { return; }
  if (!window.Plotly) { setTimeout(draw, 100); return; }
  if (target._geodemoDrawn === props.value) { return; }  // the same figure sent again: keep the animation going
  target._geodemoDrawn = props.value;
  const fig = JSON.parse(props.value);
  window.Plotly.react(target, {data: fig.data, layout: fig.layout, frames: fig.frames || [],
                               config: {responsive: true, displaylogo: false}});
}
watch('value', draw);
draw();
"""
INTRO = """# geodemo — where on Earth was this taken?
Generative geolocation after PLONK (CVPR 2025): the model *samples* locations by denoising random points
onto the globe. Press ▶ on the globe to watch them land; the map then shows the exact log-density.
The shipped `default` model reads **views of the Earth from space** (it was trained on satellite-style
views, not on photos); the official PLONK photo models load from the Hugging Face hub when reachable."""


def image_path_of(payload, files: RequestFiles) -> str | None:
    """The uploaded file's path from a raw gr.Image payload (the event runs with preprocess=False, so the file
    reaches geodemo.images untouched: its checks give the error messages and EXIF GPS is kept). Only files in
    the app's own folder (uploads, cached examples) are read: any other path gets the same sentence."""
    if payload is None:
        return None
    path = payload if isinstance(payload, str) else payload.get("path") if isinstance(payload, dict) else None
    if not path or not files.holds(str(path)):
        raise gr.Error("The image did not arrive as an upload; please upload it again.")
    return str(path)


def example_images() -> tuple[list[str], list[str]]:
    """Shipped example views (paths, titles); their true centres are recognised by known_location."""
    try:
        views = [v for v in example_views() if v.path.is_file()]
    except (OSError, ValueError, KeyError):
        return [], []
    return [str(v.path) for v in views], [v.title for v in views]


def shown_level(stage: Stage) -> bool:
    """Which map refinements the app draws: every other level and the answer (each drawing costs about 0.5 s)."""
    return stage.level % 2 == 0 or stage.final


def build_demo(catalogue: Catalogue | None = None, device: str | None = None, default_model: str | None = None,
               map_options: dict | None = None, temp_bounds: TempBounds = TempBounds(),
               models: ModelCache | None = None, notice: str | None = None) -> gr.Blocks:
    """The Blocks app. Models are loaded on first use and shared read-only between users.
    models: the model cache to serve from (geodemo.space.start_app's, the first model loaded); notice: one
    sentence shown under the title (why the page did not open on the model asked for).
    map_options: the log-density map's options (geodemo.service.MAP_OPTIONS: coarse_deg, levels, ...).
    temp_bounds: age and size bounds of the app's temporary folder (Gradio's, GRADIO_TEMP_DIR at this call)."""
    catalogue = catalogue or make_catalogue()
    request_files = RequestFiles(gr.utils.get_upload_folder(), temp_bounds, keep=lambda: kept_in_cache(demo),
                                 forget=lambda paths: forget_cached(demo, paths))
    models = models or ModelCache(catalogue, device=device)
    default_model = default_model if default_model in catalogue.names else catalogue.default()
    gr.set_static_paths([str(PLOTLY_JS.parent)])
    globe_head = f'<script src="gradio_api/file={PLOTLY_JS}"></script>'

    def map_outputs(stage: Stage):
        """The map picture and the summary of one drawn stage of the request."""
        summary, cells = stage.summary, stage.cells
        if cells is None:
            title = "Samples (exact log-density map switched off)"
        else:
            title = (f"log p(location | image), conditional model (w = 0): {cells.evaluations} evaluations, "
                     f"{'coarse grid' if stage.level == 0 else f'refinement {stage.level}'}")
        figure = density_map_figure(cells, stage.samples, truth=summary.truth, best_guess=summary.best_guess,
                                    title=title, best_guess_label=best_guess_name(summary),
                                    region_temperature=summary.region_temperature)
        return render_png(figure), summary.to_markdown()

    def downloads(stage: Stage) -> tuple[str, str]:
        return write_downloads(request_files, export_rows(stage.samples, stage.sample_log_density, stage.summary,
                                                          point_guidance=POINT_GUIDANCE))

    def answer(image, model_name, guidance, steps, num_samples, seed, exact_density, progress):
        """One request: samples + globe first, then the log-density map refined in stages; the globe is drawn
        again when the log-densities settle the best guess. Raises gr.Error with one sentence for the user."""
        started = time.perf_counter()
        image_path = image_path_of(image, request_files)
        if not image_path:
            raise gr.Error("Please add an image first (upload, paste or drag one onto the image box).")
        try:
            request = check_request(num_samples, steps, guidance, seed)
            loaded = load_image(image_path)
            progress(0.05, desc=f"Loading model {model_name}")
            pipe = models.get(model_name)
            progress(0.15, desc=f"Sampling {request.num_samples} locations in {request.steps} steps")
            stages = locate(pipe, loaded, request, likelihood="map" if exact_density else "none",
                            map_options=map_options)
            first = next(stages)
        except (ImageError, ModelUnavailable, ValueError) as err:
            raise gr.Error(str(err)) from None
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: the server stays up, the user is told
            log.exception("sampling failed")
            raise gr.Error(f"The model failed on this request ({type(err).__name__}); try fewer samples or steps.") from None
        revision = uuid.uuid4().hex
        shown = first.summary
        state = {"model": model_name, "samples": first.samples.tolist(), "truth": shown.truth,
                 "best_guess": shown.best_guess}
        globe = request_globe(pipe, model_name, request, first, shown, revision)
        log.info("samples + globe in %.2f s", time.perf_counter() - started)
        files = downloads(first)
        yield globe, None, shown.to_markdown(), *files, state
        # Every later yield repeats the outputs it does not change: a prop update (gr.skip()) makes Gradio build a
        # new component into the session's config, which then grows with every request (benchmarks/README.md).
        # A repeated output costs nothing on the wire: Gradio streams a generator's outputs as diffs (empty here).
        if first.final:
            yield globe, *map_outputs(first), *files, state
            return
        try:
            progress(0.45, desc=f"Log-density map ({map_time(model_name)})")
            drawn, drawn_png = None, None
            for stage in stages:
                progress(min(0.95, 0.55 + 0.4 * stage.level / max(1, stage.levels)),
                         desc=f"Log-density map, refinement {stage.level} of {stage.levels}")
                refined = (stage.summary.best_guess, stage.summary.provisional) != (shown.best_guess, shown.provisional)
                if refined:
                    shown = stage.summary
                    globe = request_globe(pipe, model_name, request, first, shown, revision)
                    state = {**state, "best_guess": shown.best_guess}
                if shown_level(stage) and stage.cells is not drawn:
                    drawn = stage.cells
                    drawn_png, summary_text = map_outputs(stage)
                    yield globe, drawn_png, summary_text, *downloads(stage), state
                elif refined:
                    yield globe, drawn_png, shown.to_markdown(), *downloads(stage), state
        except (ValueError, RuntimeError, MemoryError) as err:
            log.exception("log-density failed")
            reason = err if isinstance(err, ValueError) else type(err).__name__  # e.g. OutOfMemoryError, not its text
            raise gr.Error(f"The log-density map could not be computed ({reason}); the samples above still stand.") from None
        log.info("request complete in %.2f s", time.perf_counter() - started)

    @on_gpu
    def locate_request(image, model_name, guidance, steps, num_samples, seed, exact_density,
                       progress=gr.Progress(track_tqdm=True)):  # track_tqdm: hub downloads show their progress
        """One request (answer). An error replaces what the previous request showed by an empty globe and a note,
        so that no output seems to answer the new request, then reaches the user as one sentence."""
        answered = None
        try:
            for update in answer(image, model_name, guidance, steps, num_samples, seed, exact_density, progress):
                answered = update
                yield update
        except gr.Error as err:
            log.warning("request not answered: %s", err.message)
            if answered is None:
                yield (globe_figure(title="No answer: see the message").to_json(), None,
                       f"**No answer.** {err.message}", None, None, None)
            else:  # the samples stand; the map that failed is cleared
                yield answered[0], None, *answered[2:]
            raise gr.Error(err.message, print_exception=False) from None
        finally:
            release_freed_memory()

    def describe(model_name):
        """The model's line, what guidance does to its samples (measured), and how long its map takes."""
        if model_name not in catalogue.names:
            return f"Unknown model {model_name!r}.", "", gr.update()
        return catalogue.describe(model_name), guidance_hint(model_name), gr.update(info=map_note(model_name))

    def globe_view(elem_id: str) -> gr.HTML:
        """A globe: the bundled plotly.js draws the figure JSON it is given (the Earth alone at first)."""
        return gr.HTML(value=globe_figure().to_json(), html_template=GLOBE_TEMPLATE, js_on_load=GLOBE_JS,
                       head=globe_head, elem_id=elem_id, min_height=GLOBE_HEIGHT)

    with gr.Blocks() as locate_tab:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(f"**Note:** {notice}", elem_id="startup-notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=320) as controls:
                image = gr.Image(label="Image (upload, paste or drag & drop)", type="filepath",
                                 sources=["upload", "clipboard"], height=300)
                examples, titles = example_images()
                if examples and not on_space():  # on a Space: below, with lazily cached answers
                    gr.Examples(examples=examples, inputs=[image], label="Examples: views from space (true centre known)",
                                example_labels=titles, examples_per_page=12)
                model = gr.Dropdown(choices=catalogue.names, value=default_model, label="Model",
                                    allow_custom_value=True)
                model_info = gr.Markdown(catalogue.describe(default_model) if default_model else "No model found.")
                guidance = gr.Slider(*LIMITS["guidance"], value=DEFAULTS["guidance"], step=0.1,
                                     label="Guidance scale w of the samples",
                                     info=f"0 = the model's own distribution (default). The best-guess marker is "
                                          f"always the guided point estimate (w = {POINT_GUIDANCE:g}).")
                guidance_info = gr.Markdown(guidance_hint(default_model) if default_model else "",
                                            elem_id="guidance-hint")
                steps = gr.Slider(*LIMITS["steps"], value=DEFAULTS["steps"], step=1, label="Sampler steps")
                num_samples = gr.Slider(16, 1024, value=DEFAULTS["num_samples"], step=16, label="Number of samples")
                seed = gr.Number(value=DEFAULTS["seed"], precision=0, minimum=0, maximum=LIMITS["seed"][1],
                                 label="Seed")
                exact_density = gr.Checkbox(value=True, label="Exact log-density map",
                                            info=map_note(default_model) if default_model else None)
                run = gr.Button("Locate", variant="primary")
            with gr.Column(scale=2, min_width=480):
                globe = globe_view("globe")
                density_map = gr.Image(label="Log-density map", type="pil", interactive=False, elem_id="density-map",
                                       format="png")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    csv_file = gr.File(label="Samples (CSV)", elem_id="csv-file")
                    geojson_file = gr.File(label="Samples (GeoJSON)", elem_id="geojson-file")
        state = gr.State()
        model.change(describe, inputs=model, outputs=[model_info, guidance_info, exact_density], api_name=False)
        run.click(locate_request, inputs=[image, model, guidance, steps, num_samples, seed, exact_density],
                  outputs=[globe, density_map, summary, csv_file, geojson_file, state], api_name="locate",
                  concurrency_limit=2, preprocess=False)
        if examples and on_space() and "default" in catalogue.names:
            # the views from space, for the shipped model; each answer is computed on its first click and then
            # served from the cache (cache_mode="lazy": nothing is computed at boot)
            request = [DEFAULTS["guidance"], DEFAULTS["steps"], DEFAULTS["num_samples"], DEFAULTS["seed"], True]
            csv.field_size_limit(2**31 - 1)  # Gradio keeps cached answers in a CSV file; a globe is megabytes of JSON
            with controls:
                gr.Examples(examples=[[path, "default", *request] for path in examples],
                            inputs=[image, model, guidance, steps, num_samples, seed, exact_density],
                            outputs=[globe, density_map, summary, csv_file, geojson_file, state],
                            fn=complete_answer(locate_request),
                            cache_examples=True, cache_mode="lazy", preprocess=False, example_labels=titles,
                            label="Examples: views from space for the shipped model (true centre known)",
                            examples_per_page=12)
    with gr.Blocks(title="geodemo — generative geolocation") as demo:
        with gr.Tab("Locate"):
            locate_tab.render()
        with gr.Tab("Compare & learn"):
            build_classroom_tab(models, catalogue, globe_view, examples=example_images(), map_options=map_options)
    return demo


def complete_answer(request_fn):
    """A streaming request's complete answer: its last update (each update carries every output). A cached
    example keeps only what its function returns last."""

    def answer(*args):
        latest = None
        for latest in request_fn(*args):
            pass
        return latest

    return answer


def write_downloads(request_files: RequestFiles, rows: list[dict]) -> tuple[str, str]:
    """Write a request's export rows (samples, best guess, truth) as CSV and GeoJSON into a fresh folder of the
    app's bounded temporary folder."""
    csv_path, geojson_path = request_files.write({"samples.csv": to_csv(rows), "samples.geojson": to_geojson(rows)})
    return str(csv_path), str(geojson_path)


def request_globe(pipe, model_name: str, request: Request, first: Stage, summary: Summary, revision: str) -> str:
    """A request's globe as JSON: its samples' trajectories (the first stage) and the best guess of `summary` (the
    latest); `revision` is the request's, so that redrawing it keeps the user's camera."""
    title = (f"{model_name} ({pipe.process.name}): {request.num_samples} samples at w = {request.guidance:g}, "
             f"best guess = guided point estimate (w = {POINT_GUIDANCE:g})")
    return globe_figure(first.prediction.trajectories_xyz[0], first.samples, truth=summary.truth,
                        best_guess=summary.best_guess, title=title, seed=request.seed,
                        state_labels=state_labels(pipe, request.steps), guided_latlon=first.guided,
                        best_guess_name=best_guess_name(summary), revision=revision).to_json()


def best_guess_name(summary: Summary) -> str:
    """The best-guess marker's legend entry: the guided point estimate, provisional until the likelihoods."""
    return f"best guess (w = {POINT_GUIDANCE:g}{', provisional' if summary.provisional else ''})"


def map_note(model_name: str) -> str:
    """The map checkbox's note: how the map is made and how long it takes for this model."""
    return f"Progressive: a coarse grid first, then refined where the mass is; {map_time(model_name)}."


def map_time(model_name: str) -> str:
    """How long the complete map takes for this model, as measured (benchmarks/app_latency.py), for the user
    to read before starting."""
    measured = measured_latency(model_name)
    if measured is None:
        return "time not measured for this model"
    return (f"about {spoken_time(measured['complete_map_s'])} in all on a {measured['machine']} "
            f"(samples + globe: {measured['samples_globe_s']:.1f} s; measured {measured['measured']})")


def spoken_time(seconds: float) -> str:
    """A duration as a person reads it: seconds up to 90 s, whole minutes beyond."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{round(seconds / 60)} min"


def kept_in_cache(demo: gr.Blocks) -> set[str]:
    """The cached files Gradio keeps for the app's lifetime (example thumbnails, components' initial values)."""
    return set().union(*(getattr(block, "keep_in_cache", ()) for block in demo.blocks.values()))


def forget_cached(demo: gr.Blocks, paths: set[str]) -> None:
    """Drop removed files from Gradio's record of the files it created (else that record grows with every
    request); each set operation is atomic, so requests adding to these sets meanwhile are safe."""
    for files in demo.temp_file_sets:
        files.difference_update(paths)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="geodemo: generative visual geolocation in the browser")
    parser.add_argument("--model", default=None,
                        help="model shown first: a shipped name, a hub id or a folder (default: $GEODEMO_MODEL, on a "
                             f"Space {SPACE_MODEL}, else the shipped default)")
    parser.add_argument("--encoder-dir", default=os.environ.get(ENCODER_DIR_ENV),
                        help="folder holding local copies of the released models' image encoders in subfolders "
                             "StreetCLIP and dinov2-reg (default: $GEODEMO_ENCODER_DIR; else the Hugging Face cache)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GEODEMO_THREADS", 1)),
                        help="torch CPU threads per request (default: $GEODEMO_THREADS, else 1; requests run two at a "
                             "time; small networks gain nothing from more threads, more threads than cores stall)")
    parser.add_argument("--temp-dir", default=None,
                        help="the app's own temporary folder (default: GRADIO_TEMP_DIR, else <temp>/geodemo-app)")
    parser.add_argument("--temp-max-mb", type=float, default=TempBounds.max_bytes / 2**20,
                        help="most megabytes the temporary folder may hold (oldest files go first)")
    parser.add_argument("--temp-max-age", type=float, default=TempBounds.max_age_s,
                        help="seconds a download or upload is kept")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                        help="requests waiting at most; more get 'the queue is full, try again'")
    return parser.parse_args(argv)


def serve(demo: gr.Blocks, **launch_options) -> None:
    """Launch and serve until SIGTERM or Ctrl-C, then stop cleanly: the queue and the server close, the app's
    temporary folder is emptied, and the process exits with status 0."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    demo.launch(prevent_thread_lock=True, **launch_options)
    while not stop.wait(0.5):
        pass
    log.info("stopping: closing the queue and the server")
    demo.close(verbose=False)
    RequestFiles(gr.utils.get_upload_folder()).clear()
    log.info("stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    args = parse_args()
    torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but no CUDA GPU is visible")
    set_local_copy_use(LOCAL_COPIES)
    try:
        set_encoder_dir(args.encoder_dir)
        start = start_app(args.model, device=args.device)
    except ValueError as err:  # ModelUnavailable included: a folder that does not exist is an error
        raise SystemExit(f"error: {err}") from None
    use_own_temp_dir(args.temp_dir)
    bounds = TempBounds(max_age_s=args.temp_max_age, max_bytes=int(args.temp_max_mb * 2**20),
                        prune_every_s=min(TempBounds.prune_every_s, args.temp_max_age),
                        keep_fresh_s=min(TempBounds.keep_fresh_s, args.temp_max_age))
    demo = build_demo(start.catalogue, device=args.device, default_model=start.first_model, temp_bounds=bounds,
                      models=start.models, notice=start.notice)
    serve(demo.queue(default_concurrency_limit=2, max_size=args.queue_size), server_name=args.host,
          server_port=args.port, share=args.share, max_file_size=int(args.max_upload_mb * 2**20))
