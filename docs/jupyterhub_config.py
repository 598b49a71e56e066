# jupyterhub_config.py: one lemonade router for a whole GPU node, run by JupyterHub as a
# service that every user of the hub reaches with their own Hub identity (docs/jupyterhub.md).
# Copy it next to your hub's config (or merge it in) and change what is marked CHANGE.
# The tests load this file as it is, changing only the authenticator, the users, the ports,
# the database and the service's environment, and adding their admin user to the
# lemonade-admin role.
c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

# -- the node router -----------------------------------------------------------------------------
# One managed service: the Hub starts `lemonade-jupyter node`, restarts it when it exits, serves
# it under /services/lemonade/ through its proxy, and authenticates its callers (OAuth in a
# browser, Hub API tokens for programs and kernels). The service listens on `url` only; the
# users reach it through the Hub's proxy.
c.JupyterHub.services = [
    {
        "name": "lemonade",
        "url": "http://127.0.0.1:10101",  # CHANGE: a free loopback port of this node
        "command": ["lemonade-jupyter", "node"],
        # The node's own Jupyter dirs: its settings (c.LemonadeApp.* in
        # /srv/lemonade/config/jupyter_server_config.py, e.g. node_model_folders,
        # remote_key_envs, max_loaded_models) and its data (pins, owners, models, under
        # /srv/lemonade/data/lemonade). CHANGE the paths to where the hub's user may write.
        "environment": {
            "JUPYTER_CONFIG_DIR": "/srv/lemonade/config",
            "JUPYTER_DATA_DIR": "/srv/lemonade/data",
            "JUPYTER_RUNTIME_DIR": "/srv/lemonade/runtime",
            # llama.cpp threads per model; 0 (or unset) uses every core.
            "LEMONADE_BACKEND_THREADS": "0",
        },
        # A browser's OAuth login may carry these scopes to the service (each user gets those
        # of them that their roles grant).
        "oauth_client_allowed_scopes": [
            "custom:lemonade:use",
            "custom:lemonade:pin",
            "custom:lemonade:admin",
        ],
        # The admin set this service up: no "authorize access" page on a user's first visit.
        "oauth_no_confirm": True,
        "display": True,  # listed on the Hub's home page
    },
]

# -- the node's scopes -------------------------------------------------------------------------
# Every route of the node checks one of these (lemonade_jupyter/server/scopes.py); a caller
# without it gets a 403 that names the scope.
c.JupyterHub.custom_scopes = {
    "custom:lemonade:use": {
        "description": "Use the node's models: chat, list, load and unload them.",
    },
    "custom:lemonade:pin": {
        "description": "Pin and unpin one's own models on the node.",
    },
    "custom:lemonade:admin": {
        "description": "Administer the node's router: pin, unpin and unload anyone's model, "
        "change settings, pull from the model hub, register remote models and local files.",
    },
}

# -- who gets them -------------------------------------------------------------------------------
c.JupyterHub.load_roles = [
    # Every user of the hub: their own things (the Hub's default), a browser login to the
    # service (access:services), and the node's models.
    {
        "name": "user",
        "scopes": [
            "self",
            "access:services!service=lemonade",
            "custom:lemonade:use",
            "custom:lemonade:pin",
        ],
    },
    # The node's admins. CHANGE: list them (JupyterHub's own admins are not node admins).
    {
        "name": "lemonade-admin",
        "description": "Administer the node's lemonade router.",
        "scopes": ["custom:lemonade:admin", "custom:lemonade:use", "custom:lemonade:pin"],
        "users": [],
    },
    # The token of each user's own Jupyter server (and the kernels it starts): the Hub's default
    # scopes plus the node's models, within what its user may do.
    {
        "name": "server",
        "scopes": [
            "users:activity!user",
            "access:servers!server",
            "custom:lemonade:use",
            "custom:lemonade:pin",
        ],
    },
]

# -- the users' own servers ------------------------------------------------------------------
# They start no router of their own (which would fight the node's over the GPU): a server whose
# environment has LEMONADE_JUPYTER_NODE_URL serves no models and no backend, and its kernels
# (%lemonade, the dashboard, Chat, openai_client()) reach the node router at that address as
# their user, with the server's own $JUPYTERHUB_API_TOKEN (scoped by the "server" role above;
# nothing to copy). CHANGE the address to the Hub's proxy as the users' servers reach it.
c.Spawner.environment = {
    "LEMONADE_JUPYTER_NODE_URL": "http://127.0.0.1:8000/services/lemonade/",
}
