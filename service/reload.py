"""Hot reload: POST /indexes/{name}/reload loads the index folder's new version beside the old one, warms it up and
swaps it in (service.indexes.IndexRegistry.reload). Requests in flight finish on the old version; none fails.

    patchcore-build-index --update indexes/bottle --data new_good/     # writes version N+1 atomically
    curl -X POST -H 'X-API-Key: ...' http://HOST:8000/indexes/bottle/reload

A version that cannot be loaded (corrupt file, wrong schema, a backbone that no longer matches) is refused with 409,
and the old version keeps serving. Behind the API key like every /indexes route (the app factory decides).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from model.errors import PatchCoreError
from service.deps import MetricsDep, RegistryDep, RunnerDep, SettingsDep
from service.errors import ServiceError, UnknownIndexError
from service.schemas import ErrorBody, ReloadResult

router = APIRouter(tags=["indexes"])


class ReloadRefusedError(ServiceError):
    status = 409


@router.post("/indexes/{name}/reload", response_model=ReloadResult,
             responses={code: {"model": ErrorBody} for code in (401, 404, 409, 503)},
             summary="load the index folder's new version, warm it up, swap it in (the old one serves meanwhile)")
async def reload_index(name: str, registry: RegistryDep, settings: SettingsDep, m: MetricsDep,
                       runner: RunnerDep) -> ReloadResult:
    if name not in registry.names:
        raise UnknownIndexError(f"unknown index {name!r}; this server holds: {', '.join(registry.names)}")
    t0 = time.perf_counter()
    old_version = registry.get(name)[1].metadata.lineage.version
    try:  # off the event loop: predictions go on while the new version loads and warms up
        old, new = await asyncio.to_thread(registry.reload, name, settings.device, settings.warmup,
                                           runner.model_lock.exclusive)
    except UnknownIndexError:
        raise
    except (PatchCoreError, OSError, ValueError, RuntimeError) as exc:
        raise ReloadRefusedError(f"the new version of index {name!r} is refused ({exc}); version {old_version} "
                                 "keeps serving") from exc
    m.bank_size.set(new.metadata.bank_size, index=name)
    m.threshold.set(new.metadata.calibration.threshold, index=name)
    return ReloadResult(
        name=name, reloaded=old.metadata.index_sha256 != new.metadata.index_sha256,
        old_version=old.metadata.lineage.version, version=new.metadata.lineage.version,
        old_index_sha256=old.metadata.index_sha256, index_sha256=new.metadata.index_sha256,
        bank_size=new.metadata.bank_size, threshold=new.metadata.calibration.threshold,
        seconds=round(time.perf_counter() - t0, 3),
    )
