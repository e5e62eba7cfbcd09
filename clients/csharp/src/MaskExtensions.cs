using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>
/// Decoding of segmentation masks (<see cref="Detection.Mask"/>, decoder yolov8-seg). A mask covers image columns
/// [Left, Left + Width) and rows [Top, Top + Height); <c>Counts</c> alternate background and object runs in
/// row-major order, starting with background (possibly 0). UNVERIFIED: not compiled here (no .NET SDK).
/// </summary>
public static class MaskExtensions
{
    /// <summary>The mask as a [Height, Width] grid, true where the object is ([r, c] is pixel (Left + c, Top + r)).
    /// Runs that overrun the grid are cut at its end.</summary>
    public static bool[,] ToGrid(this Mask mask)
    {
        int width = checked((int)mask.Width), height = checked((int)mask.Height);
        var grid = new bool[height, width];
        long total = (long)width * height, position = 0;
        for (int index = 0; index < mask.Counts.Count; index++)
        {
            long end = Math.Min(position + mask.Counts[index], total);
            if (index % 2 == 1)
            {
                for (long i = position; i < end; i++)
                    grid[i / width, i % width] = true;
            }
            position = end;
        }
        return grid;
    }

    /// <summary>Object pixels of the mask.</summary>
    public static long Area(this Mask mask)
    {
        long area = 0;
        for (int index = 1; index < mask.Counts.Count; index += 2)
            area += mask.Counts[index];
        return area;
    }
}
