// Process entry of a gateway worker: `npm start`.
import { runGatewayProcess } from "./gatewayProcess.ts";

await runGatewayProcess();
