"""schemathesis hooks: the generated requests carry real pictures and real index names, so fuzzing reaches predictions.

JSON Schema can say "a binary string" but not "a decodable picture", so the generator's own bytes would all be
answered 422 (and a schema-valid request answered 422 is a failure of check positive_data_acceptance). The map_case
hook swaps every generated file for a picture drawn from a folder, keeping the generated structure: the field names,
the number of files (so negative cases, like a batch over its maxItems, stay negative), and every other parameter.
Random bytes are fed to the decoder elsewhere (tests/service/corpus.py and tests/imaging/test_decode_fuzz.py).

`st run` loads this module through SCHEMATHESIS_HOOKS=reliability.st_hooks (reliability/fuzz_api.py sets it).
Environment:
    PATCHCORE_FUZZ_IMAGES    folder of pictures the multipart files are drawn from
    PATCHCORE_FUZZ_INDEXES   comma-separated index names; a generated ?index= mostly becomes one of them (each name
                             3 times as likely as keeping the generated string, which then gets 404)
    PATCHCORE_FUZZ_LOG       file that gets one line per response: METHOD PATH STATUS
"""

from __future__ import annotations

import functools
import os
import zlib
from pathlib import Path

import schemathesis


@functools.cache
def _pictures() -> tuple[bytes, ...]:
    folder = Path(os.environ["PATCHCORE_FUZZ_IMAGES"])
    pictures = tuple(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())
    if not pictures:
        raise RuntimeError(f"no pictures in {folder} (PATCHCORE_FUZZ_IMAGES)")
    return pictures


def _index_names() -> list[str]:
    return [n for n in os.environ.get("PATCHCORE_FUZZ_INDEXES", "").split(",") if n]


def _is_file_value(value: object) -> bool:
    return isinstance(value, (str, bytes))


def _pick(value: object, n: int) -> int:
    """A deterministic choice from the generated value itself: hypothesis replays and shrinks cases, so a hook must
    map the same input to the same output (no random module here)."""
    data = value if isinstance(value, bytes) else repr(value).encode()
    return zlib.crc32(data) % n


def _picture_for(value: object) -> object:
    return _pictures()[_pick(value, len(_pictures()))] if _is_file_value(value) else value


@schemathesis.hook
def map_case(context, case):
    """Runs on every generated case, in the coverage phase as in fuzzing."""
    body = case.body
    if isinstance(body, dict):
        if "file" in body:
            body["file"] = _picture_for(body["file"])
        if isinstance(body.get("files"), list):
            body["files"] = [_picture_for(v) for v in body["files"]]
    names = _index_names()
    if names and isinstance(case.query, dict) and isinstance(case.query.get("index"), str):
        choices = [*names * 3, case.query["index"]]
        case.query["index"] = choices[_pick(case.query["index"], len(choices))]
    path = case.path_parameters
    if names and isinstance(path, dict) and isinstance(path.get("name"), str):  # POST /indexes/{name}/reload
        choices = [*names * 3, path["name"]]
        path["name"] = choices[_pick(path["name"], len(choices))]
    return case


@schemathesis.hook
def before_add_examples(context, examples):
    """The examples phase builds its cases apart from the strategies that map_case wraps: map them here too."""
    for case in examples:
        map_case(context, case)


@schemathesis.hook
def after_call(context, case, response):
    log = os.environ.get("PATCHCORE_FUZZ_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{case.method} {case.path} {response.status_code}\n")
