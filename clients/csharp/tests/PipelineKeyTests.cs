using System.Text.Json;
using Google.Protobuf;
using VisionRpc.V1;
using Xunit;

namespace VisionRpc.Client.Tests;

/// <summary>The stream affinity key against the cases every SDK checks (tests/mesh/pipeline_key_cases.json).</summary>
public class PipelineKeyTests
{
    private static readonly string Root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../.."));

    public static IEnumerable<object[]> Cases() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Root, "tests/mesh/pipeline_key_cases.json"))).RootElement
            .GetProperty("cases")
            .EnumerateArray()
            .Select(c => new object[] { c.GetProperty("name").GetString()!, c.GetRawText() });

    [Theory]
    [MemberData(nameof(Cases))]
    public void Case(string name, string json)
    {
        using var document = JsonDocument.Parse(json);
        var c = document.RootElement;
        var request = JsonParser.Default.Parse<StreamPredictionsRequest>(c.GetProperty("request").GetRawText());
        var key = c.GetProperty("key");
        Assert.Equal(key.ValueKind == JsonValueKind.Null ? null : key.GetString(), PipelineKey.Of(request));
        var canonical = c.GetProperty("canonical");
        if (canonical.ValueKind != JsonValueKind.Null)
            Assert.Equal(canonical.GetString(), PipelineKey.CanonicalText(request));
        Assert.False(string.IsNullOrEmpty(name));
    }
}
