"""Routes maskserve adds to vLLM's app: mask admin, experiments, feedback. FastAPI glue only; auth is middleware."""

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mask_store.errors import MaskError, NotFound
from mask_store.logs import get_logger

from .protocol import ExperimentSpec, Feedback, LoadMaskRequest, UnloadMaskRequest, clip, error_json, error_response

logger = get_logger("serve")
router = APIRouter()


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    """Starlette's own HTTP errors (a body FastAPI cannot parse, an unknown path) in the OpenAI schema.

    vLLM 0.32 registers a handler for FastAPI's HTTPException only; FastAPI raises Starlette's, which then answered
    `{"detail": ...}`."""
    return error_json(str(e.detail), e.status_code, e.headers)


@router.get("/v1/masks")
async def list_masks(request: Request):
    return await request.app.state.maskserve.service.status()


@router.post("/v1/masks/load")
async def load_mask(body: LoadMaskRequest, request: Request):
    service = request.app.state.maskserve.service
    try:
        served = await service.resolve(body.mask)
        report = await service.ensure_loaded(served, pin=body.pin)
    except MaskError as e:
        return error_response(e)
    return {"mask": served.describe(), "loaded": report["loaded"], "pinned": body.pin, "report": report}


@router.post("/v1/masks/unload")
async def unload_mask(body: UnloadMaskRequest, request: Request):
    try:
        unloaded = await request.app.state.maskserve.service.unload(body.mask)
    except MaskError as e:
        return error_response(e)
    return {"mask": body.mask, "unloaded": unloaded}


@router.get("/v1/experiments")
async def list_experiments(request: Request):
    return {"experiments": [e.describe() for e in request.app.state.maskserve.experiments.by_name.values()]}


@router.post("/v1/experiments")
async def create_experiment(body: ExperimentSpec, request: Request):
    state = request.app.state.maskserve
    try:
        for arm in body.arms:
            if arm.mask != "base":
                await state.service.resolve(arm.mask)  # refuse arms that cannot be served, now rather than per request
    except MaskError as e:
        return error_response(e)
    experiment = state.experiments.add(body)
    await state.ablog.save_experiment(experiment.name, json.dumps(experiment.describe()))
    logger.info("experiment %s set: %s", experiment.name,
                ", ".join(f"{arm.mask} x{arm.weight:g}" for arm in body.arms))
    return experiment.describe()


@router.get("/v1/experiments/{name}")
async def get_experiment(name: str, request: Request):
    try:
        return request.app.state.maskserve.experiments.get(name).describe()
    except NotFound as e:
        return error_response(e)


@router.post("/v1/feedback")
async def feedback(body: Feedback, request: Request):
    if not await request.app.state.maskserve.ablog.feedback(body.id, body.score):
        return error_response(NotFound(f"no experiment request with id {clip(body.id)}"))
    return {"id": body.id, "score": body.score}
