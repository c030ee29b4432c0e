"""The management REST API (Clipper's ``/admin/...``) on the management port.

A JSON adapter over the :class:`~clipper_core.control.ControlPlane`: writes go
through it, reads come from its store (in a worker thread), and observed state
(connected replicas, learned selection state) from the data plane.

Wire rules that Clipper's own ``clipper_admin`` client depends on: every call is a
``POST /admin/<name>`` with a JSON body; success is exactly HTTP 200; a bad
request is 400 (404 when it names an app or model that does not exist) with a
JSON message; looking up something unknown answers 200 with ``{}``; model
versions are strings.

``GET /admin/openapi.json`` answers the OpenAPI document of both ports
(:mod:`clipper_core.openapi`).

One route is not a management call: ``GET /admin/bundle/<model>/<version>``
answers a deployed version's payload to a replica on another host, authenticated
by that version's bundle token (:mod:`clipper_core.replica_tokens`), never the
management token, which a replica must not hold, nor the call token, which the
frontend sends to whoever answers at a replica's address.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from clipper_core.admin_guard import BUNDLE_ROUTE, REGISTER_ROUTE, may_register
from clipper_core.admin_requests import (
    Body,
    answering_model,
    app_record,
    app_reply,
    entry_model,
    field_bool,
    field_int,
    field_str,
    field_str_list,
    model_record,
    model_reply,
    parse_body,
    pipeline_record,
    policy_config,
)
from clipper_core.auth import WWW_AUTHENTICATE, bearer_token, validate_api_keys
from clipper_core.control import ControlPlane
from clipper_core.control.artifacts import BUNDLE_KIND_HEADER, BUNDLE_SHA256_HEADER, bundle_path
from clipper_core.control.desired import DesiredState
from clipper_core.control.redeploy import put_app, put_model
from clipper_core.dataplane import QueryView
from clipper_core.dataplane.futures import consume_exception
from clipper_core.errors import (
    BadInput,
    ClipperError,
    NotFound,
    StoreBusy,
    StoreUnavailable,
    Unauthorized,
)
from clipper_core.http import Request, Response, Router, error_response, json_response
from clipper_core.http.messages import error_headers
from clipper_core.managers.envs import RuntimeEnvManager
from clipper_core.openapi import MANAGEMENT_DOCUMENT_PATH, document_route
from clipper_core.replica_tokens import ReplicaTokens
from clipper_core.requirements import check_requirements
from clipper_core.selection.runtime import SelectionService

Handler = Callable[[Body], Awaitable[Any]]

#: Request bodies from this size on (a model's payload) are parsed in a thread, so
#: that the queries sharing the loop keep being answered (~10 ms a MiB here).
_PARSE_INLINE_BELOW = 256 * 1024


def env_operations(envs: RuntimeEnvManager | None) -> dict[str, Handler]:
    """``build_runtime_env`` and ``get_runtime_env``: per-model virtual
    environments, built by the local container manager (``envs``; None when the
    server's container manager builds none)."""

    def manager() -> RuntimeEnvManager:
        if envs is None:
            raise BadInput("this server's container manager builds no runtime environments")
        return envs

    async def build_runtime_env(body: Body) -> Any:
        m = manager()
        env_id = m.start_build(check_requirements(body.get("requirements")))
        return m.status(env_id, m.build_log_start(env_id))

    async def get_runtime_env(body: Body) -> Any:
        env_id = body.get("env_id")
        if not isinstance(env_id, str) or not re.fullmatch(r"[0-9a-f]{1,64}", env_id):
            raise BadInput("field 'env_id' must be an environment id")
        offset = body.get("offset") or 0
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadInput("field 'offset' must be a non-negative integer")
        return manager().status(env_id, offset)

    return {"build_runtime_env": build_runtime_env, "get_runtime_env": get_runtime_env}


def install(
    router: Router,
    control: ControlPlane,
    dataplane: QueryView,
    selection: SelectionService,
    *,
    envs: RuntimeEnvManager | None,
    inspect: Callable[[], dict[str, Any]],
    shutdown: Callable[[], None],
    tokens: ReplicaTokens,
    admin_token: str | None = None,
) -> None:
    """Add the management routes to ``router``.

    Args:
        control: Every write goes through it; its store answers the reads.
        dataplane: Observed state: connected replicas, apps' selectors.
        selection: The apps' learned selection state.
        envs: The local container manager's environments, or None.
        inspect: The ``get_state`` figures (``inspect_instance``).
        shutdown: Asks the server to stop.
        tokens: The replica tokens (``get_replica_token``, the bundle route,
            registrations).
        admin_token: The management token, which the guard checked, unless
            ``register_replica`` came with another one (see
            :func:`~clipper_core.admin_guard.may_register`).
    """
    store = control.store

    async def read(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def add_app(body: Body) -> Any:
        # Registering again: "unchanged: ...", "updated: ..." or a refusal.
        keys = body.get("api_keys")
        return await put_app(
            control, app_record(body), None if keys is None else validate_api_keys(keys)
        )

    async def set_api_keys(body: Body) -> Any:
        # An empty list lets the app's queries through without a key again.
        keys = validate_api_keys(body.get("api_keys"))
        await control.set_app_api_keys(field_str(body, "app_name"), keys)
        return "Success!"

    async def delete_app(body: Body) -> Any:
        await control.delete_app(field_str(body, "name"))
        return "Success!"

    async def add_model(body: Body) -> Any:
        # A new version becomes current once it serves, as in Clipper, unless
        # "make_current": false (a canary).
        make_current = body.get("make_current")
        return await put_model(
            control,
            model_record(body),
            body.get("payload_b64"),
            True if make_current is None else field_bool(make_current, "make_current"),
        )

    async def add_model_links(body: Body) -> Any:
        app = field_str(body, "app_name")
        models = field_str_list(body, "model_names")
        linked = set(await read(store.linked_models, app))
        new = [m for m in dict.fromkeys(models) if m not in linked]
        if new:
            # One transaction: a missing or mismatched model links none of them.
            await control.link(app, *new)
        if models and not new:
            return f"unchanged: {', '.join(models)} linked to application {app} already"
        return "Success!"

    async def remove_model_links(body: Body) -> Any:
        app = field_str(body, "app_name")
        for model in field_str_list(body, "model_names"):
            await control.unlink(app, model)
        return "Success!"

    async def set_model_version(body: Body) -> Any:
        await control.set_model_version(
            field_str(body, "model_name"), field_str(body, "model_version")
        )
        return "Success!"

    def links_if_any(name: str) -> list[str] | None:
        # None: deleted since it was read (the reads are not one transaction).
        try:
            return store.linked_models(name)
        except NotFound:
            return None

    def apps_with_links(verbose: bool) -> Any:
        apps = store.list_apps()
        if verbose:
            linked = [(a, links_if_any(a.name)) for a in apps]
            return [app_reply(a, links) for a, links in linked if links is not None]
        return [a.name for a in apps]

    def answered(reply: dict[str, Any]) -> dict[str, Any]:
        # Read on the loop: the data plane is what answers the app's queries.
        return {**reply, "answering_model": answering_model(dataplane, reply["name"])}

    async def get_all_applications(body: Body) -> Any:
        verbose = bool(body.get("verbose"))
        apps = await read(apps_with_links, verbose)
        return [answered(a) for a in apps] if verbose else apps

    def app_with_links(name: str) -> Any:
        rec = store.get_app(name)
        links = None if rec is None else links_if_any(name)
        return {} if rec is None or links is None else app_reply(rec, links)

    async def get_application(body: Body) -> Any:
        reply = await read(app_with_links, field_str(body, "name"))
        return answered(reply) if reply else reply

    def links_of(name: str) -> Any:
        return links_if_any(name) or []

    async def get_linked_models(body: Body) -> Any:
        return await read(links_of, field_str(body, "app_name"))

    def model_of(name: str, version: str) -> Any:
        rec = store.get_model(name, version)
        return {} if rec is None else model_reply(rec, store.get_current_version(name))

    async def get_model(body: Body) -> Any:
        return await read(model_of, field_str(body, "model_name"), field_str(body, "model_version"))

    def models(verbose: bool) -> Any:
        recs = store.list_models()
        if verbose:
            return [model_reply(m, store.get_current_version(m.name)) for m in recs]
        return [f"{m.name}:{m.version}" for m in recs]

    async def get_all_models(body: Body) -> Any:
        return await read(models, bool(body.get("verbose")))

    async def get_all_containers(body: Body) -> Any:
        out: list[Any] = []
        for model in dataplane.models.values():
            for mv in model.versions.values():
                for info in mv.replica_info():
                    if body.get("verbose"):
                        out.append({"model_name": mv.name, "model_version": mv.version, **info})
                    else:
                        out.append(f"{mv.name}:{mv.version}:{info['replica_id']}")
        return out

    async def delete_versioned_model(body: Body) -> Any:
        await control.delete_model_version(
            field_str(body, "model_name"), field_str(body, "model_version")
        )
        return "Success!"

    async def version_of(body: Body) -> tuple[str, str | None]:
        name = field_str(body, "model_name")
        version = body.get("model_version")
        if version in (None, ""):
            version = await read(store.get_current_version, name)
        return name, None if version is None else str(version)

    async def set_num_replicas(body: Body) -> Any:
        name, version = await version_of(body)
        if version is None:
            raise BadInput(f"model {name!r} has no current version")
        await control.set_num_replicas(name, version, field_int(body, "num_replicas"))
        return "Success!"

    async def get_num_replicas(body: Body) -> Any:
        name, version = await version_of(body)
        rec = None if version is None else await read(store.get_model, name, version)
        return {} if rec is None else {"num_replicas": rec.num_replicas, "version": rec.version}

    async def register_replica(body: Body, headers: Mapping[str, str]) -> Any:
        address = field_str(body, "address")
        replica = body.get("replica_id")
        replica_id = str(replica) if replica not in (None, "") else f"external-{address}"
        name, version = field_str(body, "model_name"), field_str(body, "model_version")
        may_register(headers, admin_token, tokens, name, version, replica_id)
        await control.register_replica(
            name,
            version,
            replica_id,
            address,
            tls=field_bool(body.get("tls"), "tls"),
        )
        return {"replica_id": replica_id}

    async def get_replica_token(body: Body) -> Any:
        # For whoever starts a replica elsewhere: its --token-file (token),
        # --bundle-token-file (bundle_token), and the path of its --bundle-url.
        name, version = field_str(body, "model_name"), field_str(body, "model_version")
        rec = await read(store.get_model, name, version)
        if rec is None:
            raise NotFound(f"model {name}:{version} is not registered")
        return {
            "token": tokens.token(name, version),
            "bundle_token": tokens.bundle_token(name, version),
            "register_token": tokens.register_token(name, version),
            "bundle_path": bundle_path(name, version, rec.container),
        }

    async def set_selection_policy(body: Body) -> Any:
        await control.set_selection_policy(
            field_str(body, "app_name"), field_str(body, "policy"), policy_config(body)
        )
        return "Success!"

    async def get_selection_state(body: Body) -> Any:
        name = field_str(body, "app_name")
        app = dataplane.apps.get(name)
        if app is None:
            return {}
        uid = body.get("uid")
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int) or uid < 0):
            raise BadInput("field 'uid' must be an integer >= 0")
        return selection.get(name).describe(app.linked_models, uid)

    async def apply(body: Body) -> Any:
        # The declarative file's JSON form (``clipper apply -f``): the changes made,
        # or with dry_run those that would be.
        prune = field_bool(body.pop("prune", None), "prune")
        dry_run = field_bool(body.pop("dry_run", None), "dry_run")
        desired = DesiredState.from_dict(body)
        plan = control.plan if dry_run else control.apply
        return [c.to_dict() for c in await plan(desired, prune=prune)]

    def entry_input_type(body: Body) -> str:
        entry = entry_model(body)
        if entry is not None:
            name, version = entry
            recs = store.list_models(name)
            types = {r.input_type for r in recs if version is None or r.version == version}
            if len(types) == 1:
                return types.pop()
        # No model to derive it from: the graph's check says what is wrong
        # (no single entry, a model that is not deployed...).
        return "doubles"

    async def pipeline_of(body: Body) -> Any:
        derived = None if "input_type" in body else await read(entry_input_type, body)
        return pipeline_record(body, derived)

    async def add_pipeline(body: Body) -> Any:
        keys = body.get("api_keys")
        rec = await pipeline_of(body)
        await control.register_pipeline(rec, None if keys is None else validate_api_keys(keys))
        return "Success!"

    async def update_pipeline(body: Body) -> Any:
        keys = body.get("api_keys")
        valid_keys = None if keys is None else validate_api_keys(keys)
        changed = await control.update_pipeline(await pipeline_of(body))
        if valid_keys is not None:  # absent: the keys stay as they are
            await control.set_pipeline_api_keys(field_str(body, "name"), valid_keys)
        return {"changed": changed}

    async def set_pipeline_api_keys(body: Body) -> Any:
        # An empty list lets the pipeline's queries through without a key again.
        keys = validate_api_keys(body.get("api_keys"))
        await control.set_pipeline_api_keys(field_str(body, "name"), keys)
        return "Success!"

    async def delete_pipeline(body: Body) -> Any:
        await control.delete_pipeline(field_str(body, "name"))
        return "Success!"

    def pipeline_reply(name: str) -> Any:
        rec = store.get_pipeline(name)
        return {} if rec is None else rec.to_dict()

    async def get_pipeline(body: Body) -> Any:
        return await read(pipeline_reply, field_str(body, "name"))

    def pipelines(verbose: bool) -> Any:
        recs = store.list_pipelines()
        return [p.to_dict() for p in recs] if verbose else [p.name for p in recs]

    async def get_all_pipelines(body: Body) -> Any:
        return await read(pipelines, bool(body.get("verbose")))

    async def get_state(body: Body) -> Any:
        return inspect()

    async def shutdown_call(body: Body) -> Any:
        shutdown()
        return "Shutting down"

    operations: dict[str, Handler] = {
        "add_app": add_app,
        "set_api_keys": set_api_keys,
        "delete_app": delete_app,
        "delete_application": delete_app,
        "add_model": add_model,
        "add_model_links": add_model_links,
        "remove_model_links": remove_model_links,
        "set_model_version": set_model_version,
        "get_all_applications": get_all_applications,
        "get_application": get_application,
        "get_linked_models": get_linked_models,
        "get_model": get_model,
        "get_all_models": get_all_models,
        "get_all_containers": get_all_containers,
        "delete_versioned_model": delete_versioned_model,
        "set_num_replicas": set_num_replicas,
        "get_num_replicas": get_num_replicas,
        "get_replica_token": get_replica_token,
        "get_state": get_state,
        "apply": apply,
        "set_selection_policy": set_selection_policy,
        "get_selection_state": get_selection_state,
        "add_pipeline": add_pipeline,
        "update_pipeline": update_pipeline,
        "delete_pipeline": delete_pipeline,
        "set_pipeline_api_keys": set_pipeline_api_keys,
        "get_pipeline": get_pipeline,
        "get_all_pipelines": get_all_pipelines,
        "shutdown": shutdown_call,
        **env_operations(envs),
    }

    def call(
        handler: Handler | Callable[[Body, Mapping[str, str]], Awaitable[Any]],
        *,
        with_headers: bool = False,
    ) -> Callable[[Request, dict[str, str]], Awaitable[Response]]:
        async def dispatch(request: Request, params: dict[str, str]) -> Response:
            try:
                if len(request.body) < _PARSE_INLINE_BELOW:
                    body = parse_body(request)
                else:  # a model's payload: parsed off the loop that serves queries
                    body = await asyncio.to_thread(parse_body, request)
                args = (body, request.headers) if with_headers else (body,)
                # Run to its end even if the client goes away (the HTTP server
                # cancels a closed connection's handler): a write stopped halfway
                # (a count stored, its replicas not started) waited for a restart.
                work = asyncio.ensure_future(handler(*args))
                work.add_done_callback(consume_exception)
                result = await asyncio.shield(work)
            except Unauthorized as exc:
                return error_response(401, exc.kind, str(exc), WWW_AUTHENTICATE)
            except ClipperError as exc:
                # 404 for a missing app or model; every other client error is
                # 400; a store that cannot be reached or is locked 503 (worth a
                # retry: nothing was written); any other server-side failure
                # 500 (a container that would not start will not on a retry).
                status = exc.http_status
                if isinstance(exc, StoreBusy | StoreUnavailable):
                    return error_response(status, exc.kind, str(exc), error_headers(exc))
                status = 500 if status >= 500 else 404 if status == 404 else 400
                return error_response(status, exc.kind, str(exc))
            return json_response(result)

        return dispatch

    async def ping(request: Request, params: dict[str, str]) -> Response:
        return json_response("pong")

    async def bundle(request: Request, params: dict[str, str]) -> Response:
        name, version = params["model"], params["version"]
        # The token first: without it, nothing tells which models exist.
        if not tokens.check_bundle(name, version, bearer_token(request.headers)):
            return error_response(
                401,
                "unauthorized",
                f"the bundle of {name}:{version} needs that version's bundle token"
                " (get_replica_token's bundle_token; its token is the replicas' call token)",
                WWW_AUTHENTICATE,
            )
        rec = await read(store.get_model, name, version)
        found = None if rec is None else await control.artifacts.open(name, version, rec.container)
        if found is None:
            return error_response(
                404,
                "not_found",
                f"model {name}:{version} has no bundle (it is not deployed, or its files"
                " were not deployed through the management API)",
            )
        headers = {BUNDLE_KIND_HEADER: found.kind, BUNDLE_SHA256_HEADER: found.sha256}
        return Response(200, found.data, "application/octet-stream", headers)

    # One literal route per call: the router lists them (the OpenAPI document's
    # test reads it), and an unknown call is the router's 404.
    for name, handler in operations.items():
        router.add("POST", f"/admin/{name}", call(handler))
    router.add("POST", REGISTER_ROUTE, call(register_replica, with_headers=True))
    router.add("GET", MANAGEMENT_DOCUMENT_PATH, document_route)
    router.add("GET", BUNDLE_ROUTE + "{model}/{version}", bundle)
    router.add("GET", "/admin/ping", ping)
