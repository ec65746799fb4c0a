"""The web console (README, Console): server-rendered pages over the same library functions the
API routes call, served by ``profilehook serve`` at ``/`` with every asset in the package."""
