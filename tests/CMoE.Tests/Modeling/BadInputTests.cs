using System.Text;
using System.Text.Json.Nodes;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>Every bad input fails early with a message that names the problem and the fix.</summary>
public class BadInputTests
{
    private static void WriteRaw(string path, string header, int dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((ulong)json.Length));
        f.Write(json);
        f.Write(new byte[dataBytes]);
    }

    [Fact]
    public void MissingConfigKeyIsNamed()
    {
        var config = TinyCheckpoint.Config();
        config.Remove("hidden_size");
        var act = () => LlamaConfig.Parse(config, "x/config.json");
        act.Should().Throw<CMoEFormatException>().WithMessage("*lacks the integer key 'hidden_size'*");
    }

    [Fact]
    public void UnsupportedArchitectureIsNamedWithTheSupportedOnes()
    {
        var act = () => LlamaConfig.Parse(TinyCheckpoint.Config("GPT2LMHeadModel"));
        act.Should().Throw<CMoEFormatException>().WithMessage("*'GPT2LMHeadModel' is not supported*LlamaForCausalLM*");
    }

    [Fact]
    public void HeadsThatDoNotDivideAreRejected()
    {
        var config = TinyCheckpoint.Config();
        config["num_key_value_heads"] = 3;
        var act = () => LlamaConfig.Parse(config);
        act.Should().Throw<CMoEFormatException>().WithMessage("*multiple of num_key_value_heads*");
    }

    [Fact]
    public void ShapeMismatchBetweenConfigAndTensorsIsReported()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        TinyCheckpoint.Write(dir.Path, TinyCheckpoint.Config());
        var bigger = TinyCheckpoint.Config();
        bigger["intermediate_size"] = 96;
        File.WriteAllText(dir["config.json"], bigger.ToJsonString());
        var act = () => CheckpointLoader.Load(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*mlp.*_proj.weight' has shape*config.json implies*");
    }

    [Fact]
    public void MissingTensorIsReported()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config();
        TinyCheckpoint.Write(dir.Path, config);
        config["num_hidden_layers"] = 3;
        File.WriteAllText(dir["config.json"], config.ToJsonString());
        var act = () => CheckpointLoader.Load(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*lacks*tensor(s)*model.layers.2.*");
    }

    [Fact]
    public void TruncatedSafetensorsIsReported()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        TinyCheckpoint.Write(dir.Path, TinyCheckpoint.Config());
        string file = dir["model.safetensors"];
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 2)]);
        var act = () => CheckpointLoader.Load(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*not a valid safetensors file*beyond*truncated*");
    }

    [Fact]
    public void HeaderOffsetsBeyondTheFileAreReported()
    {
        using var dir = new TempDir();
        WriteRaw(dir["a.safetensors"], """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8);
        var act = () => SafeTensorsFile.Open(dir["a.safetensors"]);
        act.Should().Throw<CMoEFormatException>().WithMessage("*'w' has data_offsets [0, 16] beyond the 8 data bytes*");
    }

    [Fact]
    public void HeaderLengthBeyondTheFileIsReported()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["b.safetensors"], [.. BitConverter.GetBytes(1_000_000UL), .. "{}"u8.ToArray()]);
        var act = () => SafeTensorsFile.Open(dir["b.safetensors"]);
        act.Should().Throw<CMoEFormatException>().WithMessage("*header claims 1000000 bytes*");
    }

    [Fact]
    public void UnsupportedDTypeIsReported()
    {
        using var dir = new TempDir();
        WriteRaw(dir["c.safetensors"], """{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4);
        var act = () => SafeTensorsFile.Open(dir["c.safetensors"]);
        act.Should().Throw<CMoEFormatException>().WithMessage("*unsupported dtype 'F8_E4M3'*Supported*");
    }

    [Fact]
    public void OverlappingTensorsAndWrongByteCountsAreReported()
    {
        using var dir = new TempDir();
        WriteRaw(dir["d.safetensors"], """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12);
        ((Action)(() => SafeTensorsFile.Open(dir["d.safetensors"]))).Should().Throw<CMoEFormatException>().WithMessage("*overlap*");
        WriteRaw(dir["e.safetensors"], """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8);
        ((Action)(() => SafeTensorsFile.Open(dir["e.safetensors"]))).Should().Throw<CMoEFormatException>().WithMessage("*has 8 bytes but its shape [3] of F32 needs 12*");
    }

    [Fact]
    public void BadJsonHeaderIsReported()
    {
        using var dir = new TempDir();
        WriteRaw(dir["f.safetensors"], "{not json", 0);
        ((Action)(() => SafeTensorsFile.Open(dir["f.safetensors"]))).Should().Throw<CMoEFormatException>().WithMessage("*header is not valid JSON*");
    }

    [Fact]
    public void MissingFolderAndWeightsAreReported()
    {
        using var dir = new TempDir();
        ((Action)(() => CheckpointLoader.Load(dir["nope"]))).Should().Throw<DirectoryNotFoundException>().WithMessage("*does not exist*");
        File.WriteAllText(dir["config.json"], TinyCheckpoint.Config().ToJsonString());
        ((Action)(() => CheckpointLoader.Load(dir.Path))).Should().Throw<FileNotFoundException>().WithMessage("*No model.safetensors*");
    }

    [Fact]
    public void TokenIdsOutsideTheVocabularyAreNamed()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var model = CheckpointLoader.Load(TinyCheckpoint.Write(dir.Path, TinyCheckpoint.Config()));
        using var ids = tensor(new long[] { 1, 2, 50 }).unsqueeze(0);   // vocab is 50
        var act = () => model.Forward(ids);
        act.Should().Throw<ArgumentException>().WithMessage("*Token id 50 is outside the model's vocabulary of 50*tokenizer does not belong*");
    }

    [Fact]
    public void SafetensorsRoundTripKeepsNamesShapesAndValues()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var a = arange(Scalars.Zero, Scalars.Of(12.0), Scalars.One, dtype: ScalarType.Float32).view(3, 4);
        using var b = tensor(new long[] { 7, -1 });
        SafeTensorsWriter.Write(dir["r.safetensors"], [new("a", a), new("b", b)], new Dictionary<string, string> { ["k"] = "v" });
        using var file = SafeTensorsFile.Open(dir["r.safetensors"]);
        file.Metadata["k"].Should().Be("v");
        using var a2 = file.Load("a");
        using var b2 = file.Load("b");
        a2.shape.Should().Equal(3, 4);
        a2.data<float>().ToArray().Should().Equal(a.data<float>().ToArray());
        b2.data<long>().ToArray().Should().Equal(7, -1);
        Directory.GetFiles(dir.Path).Should().ContainSingle("no temporary file is left behind");
    }
}
