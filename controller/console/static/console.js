// relayfleet console: small progressive enhancements (live job progress); every page works
// without it.
