// The hello handler for the nodejs runtime, as an ES module: `make run`
// deploys it as `hello-node` (Runtime nodejs20.x, Handler index.handler).

// Init code runs once per environment (the init phase); invokes reuse it.
const greeting = process.env.GREETING ?? 'Hello';

export const handler = async (event, context) => {
  const name = event?.name ?? 'world';
  console.log(`greeting ${name} from ${context.functionName}`);
  return {
    message: `${greeting}, ${name}!`,
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
  };
};
