"""geodemo's Gradio app: drop an image, watch the samples land on a 3D globe, then read the log-density map.

Thin UI wiring and drawing decisions only: a request is geodemo.service.locate, which yields its stages.
Run: python app.py [--model NAME_OR_FOLDER] [--port N] [--share] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

import gradio as gr
import plotly
import torch

from geodemo.examples import example_views
from geodemo.images import ImageError, load_image
from geodemo.plotting import density_map_figure, globe_figure, render_png
from geodemo.request_files import RequestFiles, TempBounds, use_own_temp_dir
from geodemo.service import (LIMITS, Catalogue, ModelCache, ModelUnavailable, Stage, check_request, locate,
                             make_catalogue)
from geodemo.encoders.sources import ENCODER_DIR_ENV, set_encoder_dir
from geodemo.hub import LocalCopyUse, set_local_copy_use
from geodemo.space import SPACE_MODEL, request_duration, start_app
from geodemo.summary import sample_rows, to_csv, to_geojson

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
    request_files = RequestFiles(gr.utils.get_upload_folder(), temp_bounds, keep=lambda: kept_in_cache(demo))
    models = models or ModelCache(catalogue, device=device)
    default_model = default_model if default_model in catalogue.names else catalogue.default()
    gr.set_static_paths([str(PLOTLY_JS.parent)])
    globe_head = f'<script src="gradio_api/file={PLOTLY_JS}"></script>'

    def map_outputs(stage: Stage):
        """The map, summary and download updates of one drawn stage of the request."""
        summary, cells = stage.summary, stage.cells
        if cells is None:
            title, cells = "Samples (exact log-density map switched off)", None
        else:
            title = (f"log p(location | image), conditional model (w = 0): {cells.evaluations} evaluations, "
                     f"{'coarse grid' if stage.level == 0 else f'refinement {stage.level}'}")
        figure = density_map_figure(cells, stage.samples, truth=summary.truth, best_guess=summary.best_guess,
                                    title=title)
        rows = sample_rows(stage.samples, stage.sample_log_density)
        return render_png(figure), summary.to_markdown(), *write_downloads(request_files, rows, summary)

    @on_gpu
    def locate_request(image, model_name, guidance, steps, num_samples, seed, exact_density,
                       progress=gr.Progress(track_tqdm=True)):  # track_tqdm: hub downloads show their progress
        """One request: samples + globe first, then the log-density map refined in stages."""
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
        summary = first.summary
        globe = globe_figure(first.prediction.trajectories_xyz[0], first.samples, truth=summary.truth,
                             best_guess=summary.best_guess, process_name=pipe.process.name, seed=request.seed)
        state = {"model": model_name, "samples": first.samples.tolist(), "truth": summary.truth}
        log.info("samples + globe in %.2f s", time.perf_counter() - started)
        files = write_downloads(request_files, sample_rows(first.samples), summary)
        yield globe.to_json(), gr.skip(), summary.to_markdown(), *files, state
        if first.final:
            yield gr.skip(), *map_outputs(first)[:1], gr.skip(), gr.skip(), gr.skip(), state
            return
        try:
            progress(0.45, desc="Log-density on a coarse grid and at the samples")
            drawn = None
            for stage in stages:
                progress(min(0.95, 0.55 + 0.4 * stage.level / max(1, stage.levels)),
                         desc=f"Log-density map, refinement {stage.level}")
                if shown_level(stage) and stage.cells is not drawn:
                    drawn = stage.cells
                    yield gr.skip(), *map_outputs(stage), state
        except (ValueError, RuntimeError, MemoryError) as err:
            log.exception("log-density failed")
            reason = err if isinstance(err, ValueError) else type(err).__name__  # e.g. OutOfMemoryError, not its text
            raise gr.Error(f"The log-density map could not be computed ({reason}); the samples above still stand.") from None
        log.info("request complete in %.2f s", time.perf_counter() - started)

    def describe(model_name):
        return catalogue.describe(model_name) if model_name in catalogue.names else f"Unknown model {model_name!r}."

    with gr.Blocks(title="geodemo — generative geolocation",
                   delete_cache=(max(1, int(temp_bounds.prune_every_s)), max(1, int(temp_bounds.max_age_s)))) as demo:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(f"**Note:** {notice}", elem_id="startup-notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(label="Image (upload, paste or drag & drop)", type="filepath",
                                 sources=["upload", "clipboard"], height=300)
                examples, titles = example_images()
                if examples:
                    gr.Examples(examples=examples, inputs=[image], label="Examples: views from space (true centre known)",
                                example_labels=titles, examples_per_page=12)
                model = gr.Dropdown(choices=catalogue.names, value=default_model, label="Model",
                                    allow_custom_value=True)
                model_info = gr.Markdown(describe(default_model) if default_model else "No model found.")
                guidance = gr.Slider(*LIMITS["guidance"], value=2.0, step=0.1, label="Guidance scale w",
                                     info="0 = plain conditional model; larger = sharper, less diverse")
                steps = gr.Slider(*LIMITS["steps"], value=32, step=1, label="Sampler steps")
                num_samples = gr.Slider(16, 1024, value=128, step=16, label="Number of samples")
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=LIMITS["seed"][1], label="Seed")
                exact_density = gr.Checkbox(value=True, label="Exact log-density map (progressive, a few seconds)")
                run = gr.Button("Locate", variant="primary")
            with gr.Column(scale=2, min_width=480):
                globe = gr.HTML(value=globe_figure().to_json(), html_template=GLOBE_TEMPLATE, js_on_load=GLOBE_JS,
                                head=globe_head, elem_id="globe", min_height=GLOBE_HEIGHT)
                density_map = gr.Image(label="Log-density map", type="pil", interactive=False, elem_id="density-map",
                                       format="png")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    csv_file = gr.File(label="Samples (CSV)", elem_id="csv-file")
                    geojson_file = gr.File(label="Samples (GeoJSON)", elem_id="geojson-file")
        state = gr.State()
        model.change(describe, inputs=model, outputs=model_info, api_name=False)
        run.click(locate_request, inputs=[image, model, guidance, steps, num_samples, seed, exact_density],
                  outputs=[globe, density_map, summary, csv_file, geojson_file, state], api_name="locate",
                  concurrency_limit=2, preprocess=False)
    return demo


def write_downloads(request_files: RequestFiles, rows: list[dict], summary) -> tuple[str, str]:
    """Write the samples as CSV and GeoJSON into a fresh folder of the app's bounded temporary folder."""
    csv_path, geojson_path = request_files.write({"samples.csv": to_csv(rows),
                                                  "samples.geojson": to_geojson(rows, summary)})
    return str(csv_path), str(geojson_path)


def kept_in_cache(demo: gr.Blocks) -> set[str]:
    """The cached files Gradio keeps for the app's lifetime (example thumbnails, components' initial values)."""
    return set().union(*(getattr(block, "keep_in_cache", ()) for block in demo.blocks.values()))


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
    """Launch and serve until SIGTERM or Ctrl-C, then stop cleanly: the queue and the server close, Gradio
    removes the files it cached, the request folders go, and the process exits with status 0."""
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
                        prune_every_s=min(TempBounds.prune_every_s, args.temp_max_age))
    demo = build_demo(start.catalogue, device=args.device, default_model=start.first_model, temp_bounds=bounds,
                      models=start.models, notice=start.notice)
    serve(demo.queue(default_concurrency_limit=2, max_size=args.queue_size), server_name=args.host,
          server_port=args.port, share=args.share, max_file_size=int(args.max_upload_mb * 2**20))
