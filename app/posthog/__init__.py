"""PostHog's own events, as its HTTP Webhook destination posts them. Pure: no I/O here."""
