// Imported first by the CLI, so that SIGUSR1 has a listener from the very start. Without one, Node answers
// SIGUSR1 by opening its inspector: a debugger on 127.0.0.1:9229 that runs whatever code it is sent. With
// one, the signal is an event like any other. The agent passes it on to its wrapped command (gunicorn
// reopens its logs on it) or logs it, and so does the proxy; this listener covers the time before theirs.
process.on('SIGUSR1', () => {})
