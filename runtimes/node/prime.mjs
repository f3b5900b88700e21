// Imported once while the runtime is pre-started (bootstrap.js, phase 1), so
// that Node's ES module loader is initialised before any function is chosen:
// a function that is an ES module then pays only for its own files.
export const primed = true;
