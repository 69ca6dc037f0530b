"""A local stand-in for Klaviyo's REST API (the parts this project uses), for tests, demos and benchmarks.

    from localdev.klaviyo_emulator import EmulatorConfig, create_app
    app = create_app(EmulatorConfig(api_keys=("pk_test",), rate_limits=False))

or as a process: `python -m localdev.klaviyo_emulator --port 8899 --api-key pk_test`. See README.md.
"""

from .app import ConnectionDropped, Emulator, EmulatorApp, EmulatorConfig, create_app

__all__ = ["ConnectionDropped", "Emulator", "EmulatorApp", "EmulatorConfig", "create_app"]
