using System.Text.Json;
using Google.Protobuf;
using Grpc.Core;
using VisionRpc.V1;
using Xunit;

namespace VisionRpc.Client.Tests;

/// <summary>Runs the Infer cases of tests/conformance/cases.json against $VISIONRPC_ADDRESS.</summary>
public class ConformanceTests
{
    private static readonly string Root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../.."));

    public static IEnumerable<object[]> InferCases() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Root, "tests/conformance/cases.json"))).RootElement
            .EnumerateArray()
            .Where(c => c.GetProperty("rpc").GetString() == "Infer")
            .Select(c => new object[] { c.GetProperty("name").GetString()!, c.GetRawText() });

    private static string Address() =>
        Environment.GetEnvironmentVariable("VISIONRPC_ADDRESS") is { Length: > 0 } address
            ? "http://" + address
            : throw new InvalidOperationException(
                "VISIONRPC_ADDRESS is not set: run through python tests/conformance/harness.py --cwd clients/csharp -- dotnet test tests");

    [Theory]
    [MemberData(nameof(InferCases))]
    public async Task InferCase(string name, string json)
    {
        using var document = JsonDocument.Parse(json);
        var request = document.RootElement.GetProperty("request");
        var expect = document.RootElement.GetProperty("expect");
        var media = Environment.GetEnvironmentVariable("VISIONRPC_CONFORMANCE_MEDIA") ?? "";
        var images = request.GetProperty("images").EnumerateArray()
            .Select(i => i.TryGetProperty("file", out var file)
                ? File.ReadAllBytes(Path.Combine(media, file.GetString()!))
                : Convert.FromBase64String(i.GetProperty("base64").GetString()!))
            .ToList();
        var options = request.TryGetProperty("options", out var o) ? JsonParser.Default.Parse<InferOptions>(o.GetRawText()) : new InferOptions();
        var model = request.TryGetProperty("model_id", out var m) ? m.GetString()! : "";
        using var client = new VisionRpcClient(Address());

        if (expect.TryGetProperty("code", out var code))
        {
            var error = await Assert.ThrowsAsync<VisionRpcException>(() => client.InferAsync(images, model, options));
            Assert.Equal(code.GetString(), ToUpperSnake(error.Code));
            Assert.Equal(expect.GetProperty("reason").GetString(), error.Reason);
            if (expect.TryGetProperty("field", out var field))
                Assert.Equal(field.GetString(), error.FieldViolations[0].Field);
            return;
        }
        var response = await client.InferAsync(images, model, options);
        var expected = expect.GetProperty("predictions").EnumerateArray().ToList();
        Assert.Equal(expected.Count, response.Predictions.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            foreach (var wanted in expected[i].GetProperty("detections_include").EnumerateArray())
            {
                var className = wanted.GetProperty("class_name").GetString();
                var minConfidence = wanted.GetProperty("min_confidence").GetSingle();
                Assert.Contains(response.Predictions[i].Detections,
                    d => d.ClassName == className && d.Confidence >= minConfidence);
            }
        }
        _ = name;
    }

    private static string ToUpperSnake(StatusCode code) => code switch
    {
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.Unavailable => "UNAVAILABLE",
        _ => code.ToString().ToUpperInvariant(),
    };
}
