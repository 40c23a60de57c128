"""Local fakes of the platforms the bridge talks to, served on loopback."""
