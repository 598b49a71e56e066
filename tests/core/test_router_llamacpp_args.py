"""The router restores saved ``llamacpp_args`` under the server's own policy.

Saved options are checked again at start, like a ``/load`` body: a server whose owner allows
any flag gets its saved flags back; a strict one drops those outside the allowlist (keeping
the pin) rather than pass them to an engine.
"""

from __future__ import annotations

import psutil

from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.core.options import LoadOptions

from .conftest import wait_event

ANY_FLAG = "--alias extra"  # outside the allowlist, taken by both engines


async def test_saved_flags_come_back_only_under_the_any_flag_setting(
    catalog, make_router, data_dir
):
    async with make_router(catalog, allow_any_llamacpp_args=True) as router:
        m = await router.load("user.m1", pinned=True, options=LoadOptions(llamacpp_args=ANY_FLAG),
                              given=frozenset({"llamacpp_args"}))
        assert psutil.Process(m.backend.pid).cmdline()[-2:] == ["--alias", "extra"]

    async with make_router(Catalog(data_dir), allow_any_llamacpp_args=True) as router:
        assert router.preferences.options("user.m1").llamacpp_args == ANY_FLAG
        await wait_event(router, "reload", "user.m1")
        argv = psutil.Process(router.get_live("user.m1").backend.pid).cmdline()
        assert argv[-2:] == ["--alias", "extra"]

    async with make_router(Catalog(data_dir)) as router:
        assert router.preferences.options("user.m1").llamacpp_args == ""
        assert router.preferences.pinned("user.m1")
