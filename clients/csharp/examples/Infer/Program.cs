// dotnet run --project clients/csharp/examples/Infer -- http://127.0.0.1:50051 coffee.png
using VisionRpc.Client;

var address = args.Length > 0 ? args[0] : "http://127.0.0.1:50051";
var images = args.Skip(1).DefaultIfEmpty("coffee.png");
using var client = new VisionRpcClient(address);
try
{
    var response = await client.InferFilesAsync(images);
    Console.WriteLine($"model {response.ModelName}/{response.ModelVersion} on {response.Engine.Engine} {response.Engine.Device}");
    foreach (var prediction in response.Predictions)
        foreach (var d in prediction.Detections)
            Console.WriteLine($"  {d.ClassName} {d.Confidence:F2} [{d.Box.XMin:F0}, {d.Box.YMin:F0}, {d.Box.XMax:F0}, {d.Box.YMax:F0}]");
}
catch (VisionRpcException e)
{
    Console.Error.WriteLine($"error: {e.Message} (reason {e.Reason})");
    foreach (var v in e.FieldViolations) Console.Error.WriteLine($"  {v.Field}: {v.Description}");
    return 2;
}
return 0;
