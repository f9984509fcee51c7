"""One router module per area; ``services.api.app.ROUTERS`` lists them."""
