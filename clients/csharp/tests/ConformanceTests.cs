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
                var matches = response.Predictions[i].Detections
                    .Where(d => d.ClassName == className && d.Confidence >= minConfidence);
                if (wanted.TryGetProperty("keypoints", out var keypoints))
                {
                    var count = keypoints.GetInt32();
                    matches = matches.Where(d => d.Keypoints.Count == count);
                }
                if (wanted.TryGetProperty("keypoints_at_box_corners", out var corners) && corners.GetBoolean())
                    matches = matches.Where(KeypointsAtBoxCorners);
                if (wanted.TryGetProperty("mask", out var mask))
                {
                    Assert.Equal("lower_right_half", mask.GetString());
                    matches = matches.Where(MaskIsLowerRightHalf);
                }
                Assert.NotEmpty(matches);
            }
        }
        _ = name;
    }

    /// <summary>The derived pose model: keypoints 0, 1, 3, 4 on the box's corners (0.01 px), each keypoint with
    /// the detection's confidence (1e-4).</summary>
    private static bool KeypointsAtBoxCorners(Detection d)
    {
        var b = d.Box;
        if (b is null || d.Keypoints.Count != 5)
            return false;
        (float X, float Y)[] corners = [(b.XMin, b.YMin), (b.XMax, b.YMin), (b.XMin, b.YMax), (b.XMax, b.YMax)];
        int[] indices = [0, 1, 3, 4];
        for (var i = 0; i < corners.Length; i++)
        {
            var k = d.Keypoints[indices[i]];
            if (Math.Abs(k.X - corners[i].X) > 0.01f || Math.Abs(k.Y - corners[i].Y) > 0.01f)
                return false;
        }
        return d.Keypoints.All(k => Math.Abs(k.Confidence - d.Confidence) <= 1e-4f);
    }

    /// <summary>The derived segmentation model: the mask's grid is the pixels whose centre is in the box, its
    /// top-left pixel background, its bottom-right pixel object, 40-60 % of it object.</summary>
    private static bool MaskIsLowerRightHalf(Detection d)
    {
        var m = d.Mask;
        var b = d.Box;
        if (m is null || b is null || m.Width == 0 || m.Height == 0)
            return false;
        static long Grid(float v) => (long)Math.Ceiling(v - 0.5);
        if (m.Left != Grid(b.XMin) || m.Top != Grid(b.YMin)
            || (long)m.Left + m.Width != Grid(b.XMax) || (long)m.Top + m.Height != Grid(b.YMax))
            return false;
        var grid = m.ToGrid();
        var fraction = (double)m.Area() / ((long)m.Width * m.Height);
        return !grid[0, 0] && grid[(int)m.Height - 1, (int)m.Width - 1] && fraction >= 0.4 && fraction <= 0.6;
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
