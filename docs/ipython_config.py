# ipython_config.py: the notebook side of lemonade_jupyter (the %lemonade magics), with the
# defaults. Put the lines you change in ~/.ipython/profile_default/ipython_config.py; a kernel
# reads it when it starts.
c = get_config()  # noqa: F821 - provided by IPython when it reads this file

# Load the magics in every kernel, instead of `%load_ext lemonade_jupyter` in each notebook.
c.InteractiveShellApp.extensions = ["lemonade_jupyter"]

# Which router: "auto" ($LEMONADE_JUPYTER_URL, server_url, the JupyterHub server, this kernel's
# Jupyter server, any running server with the extension, else an embedded router in the
# kernel); "server" (never an embedded router: an error instead); "embedded" (always one).
c.LemonadeMagics.mode = "auto"
# A Jupyter server to use as given, with its token ($LEMONADE_JUPYTER_URL and
# $LEMONADE_JUPYTER_TOKEN win over them). None: find one.
c.LemonadeMagics.server_url = None
c.LemonadeMagics.token = ""
# Seconds to wait for a load or a reply.
c.LemonadeMagics.request_timeout = 600.0
# Load progress: "display" (an updating bar, notebooks), "text" (dots, terminals), "none", or
# "auto" (display in a kernel with a front end, else text).
c.LemonadeMagics.progress = "auto"
# Chat replies: "markdown" (rendered, updated as it streams), "text" (printed), or "auto"
# (markdown in a notebook, text in a terminal).
c.LemonadeMagics.chat_format = "auto"
# Seconds between two refreshes of %lemonade dashboard.
c.LemonadeMagics.poll_interval = 1.0
