"""Running the app on one machine: Klaviyo emulator, Azurite, local durable host, command line."""
